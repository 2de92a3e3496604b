"""The config of eval scienceqa: which split, base and adapter are scored, how (``EvalConfig``: format, mode,
batch), and the folder that gets the predictions, the table and the summary."""

from __future__ import annotations

from dataclasses import dataclass, field

from mm_adapter.data.config import ScienceQASource
from mm_adapter.eval.config import EvalConfig
from mm_adapter.fields import check, check_positive
from mm_adapter.model.config import ModelOptions


@dataclass
class EvalScienceQAConfig:
    """Evaluate a base model, with or without an adapter, on a ScienceQA split: predictions, table, summary."""

    split: str
    """split to evaluate: test, val, train, minival, ..."""
    out: str
    """output folder: predictions.json (official shape; resumable through predictions.partial.jsonl), table.md,
    summary.json, config.yaml, eval.json (what was evaluated, paths absolute)"""
    source: ScienceQASource = field(default_factory=ScienceQASource)
    adapter: str | None = None
    """adapter: our .safetensors file, an adapter folder, a training run's folder (its chosen adapter, else its
    final one) or a hub id org/name[@revision]; one trained with images also encodes each problem's image"""
    limit: int | None = None
    """only the first N problems of the split"""
    name: str | None = None
    """row name in the predictions file and the table (None: method, run or base, format, split[:N])"""
    reference: str | None = None
    """published tables JSON to show side by side"""
    bootstrap: int = 1000
    """bootstrap resamples for 95% intervals (0: none)"""
    overwrite: bool = False
    """replace finished predictions in --out, or discard a partial run of another configuration"""
    skip_bad_images: bool = False
    """with an image adapter: a missing/corrupt image makes its problem a no-image one (counted)"""
    audio_encoder: str | None = None
    """with an adapter trained with sound: where its Whisper encoder is now (a folder, model.bin parts, a packaged
    name, a hub id), when not where training found it; its weights must be the ones it was trained with"""
    skip_bad_audio: bool = False
    """with an audio adapter: a missing/corrupt/over-long sound makes its problem one without sound (counted)"""
    blank_audio: bool = False
    """with an audio adapter: every sound becomes one second of silence (its file is not read), as for an adapter
    trained with --blank-audio (recorded in the folder's config.yaml)"""
    progress: bool = True
    """show progress (a bar on a terminal, a line every ~10% otherwise)"""
    model: ModelOptions = field(default_factory=ModelOptions)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        check_positive(self, "limit")
        check(self, "bootstrap", low=0, integer=True)
