"""The one trainer (``trainer``) and what surrounds it: its settings (``config``), batches (``batches``),
checkpoints (``checkpoints/``: the folder written and read, ``format``; resuming from it, ``resume``), the
process and its signals (``process``), the base it trains on (``base_loading``, ``fsdp``), the metrics log
(``metrics_log``), images as a trainable part (``multimodal``), and what a run costs before it starts
(``memory_plan``).
"""
