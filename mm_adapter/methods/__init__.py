"""The ways to adapt a frozen base compared on equal terms (``--method``): their settings (``config``), what
each makes trainable (``attach``), PEFT's virtual tokens in our decoder calls (``virtual_tokens``), and the
folders other methods save (``folders``).
"""
