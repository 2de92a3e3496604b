"""Where the data comes from (torch-free: the command line builds its flags from it)."""

from __future__ import annotations

from dataclasses import dataclass

from mm_adapter.errors import ConfigError


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
