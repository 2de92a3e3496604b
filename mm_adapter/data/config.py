"""Where the data comes from: a ScienceQA source, or a generated set to write (torch-free: the command line
builds its flags from these)."""

from __future__ import annotations

from dataclasses import dataclass

from mm_adapter.errors import ConfigError
from mm_adapter.fields import check, option


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


MAX_SYNTHETIC_PROBLEMS = 50_000  # per split: 2.3x real ScienceQA's whole 21,208; an audio set of it is 6.4 GB


@dataclass
class SyntheticDataConfig:
    """A generated ScienceQA-format set in the official layout (problems.json, pid_splits.json, each problem's
    media under images/<split>/<pid>/), answerable only from its pictures, clips or recordings: a test bed where no
    real media data can be had."""

    out: str = option(positional=True, metavar="OUT_DIR")
    """the folder to write (new or empty, unless --overwrite)"""
    n_train: int = 600
    """problems in the train split"""
    n_val: int = 100
    """problems in the val split"""
    n_test: int = 200
    """problems in the test split"""
    seed: int = 0
    """seed of the generator: the same seed writes the same set"""
    overwrite: bool = False
    """write into a folder that is not empty"""

    def __post_init__(self) -> None:
        for name in ("n_train", "n_val", "n_test"):
            check(self, name, low=0, high=MAX_SYNTHETIC_PROBLEMS, integer=True)
        check(self, "seed", low=0, integer=True)
        if not str(self.out).strip():
            raise ConfigError("out", "is empty")


@dataclass
class SpokenContextConfig:
    """Real ScienceQA problems with a written context and no picture, written twice: with the context read aloud
    into audio.wav (and taken out of the text), and unchanged — the real-data test of what sound carries."""

    data: str = option(positional=True, metavar="DATA_DIR")
    """official-layout ScienceQA folder to read (problems.json, pid_splits.json)"""
    out: str = option(positional=True, metavar="OUT_DIR")
    """the folder to write: spoken/, written/ and manifest.json (new or empty, unless --overwrite)"""
    splits: list[str] = option(  # noqa: RUF009  (a field with its flag's settings)
        default_factory=lambda: ["train", "val", "test"], nargs="*", metavar="SPLIT")
    """splits of pid_splits.json to take"""
    seed: int = 0
    """seed of the voices: the same seed writes the same recordings"""
    overwrite: bool = False
    """write into a folder that is not empty"""

    def __post_init__(self) -> None:
        check(self, "seed", low=0, integer=True)
        for name in ("data", "out"):
            if not str(getattr(self, name)).strip():
                raise ConfigError(name, "is empty")
        if not self.splits or len(set(self.splits)) != len(self.splits):
            raise ConfigError("splits", f"must name each split once (got {' '.join(self.splits) or 'none'})")
