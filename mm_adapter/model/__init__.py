"""The frozen base and the adapter on it: the adapter's config (``config``), one table of model families
(``family``), the gated prompt attention (``attention``), attach / detach (``adapter``), adapter files
(``adapter_file``), and loading a base from one string (``base``, ``meta_format``).

Nothing here knows of folders, the hub, training or ScienceQA: those build on this layer.
"""
