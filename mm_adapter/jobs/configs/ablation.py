"""The config of ablate scienceqa: train scienceqa's settings as the baseline, and the values of each setting the
paper varies one at a time. Everything the variants could not train is refused before the first of them starts."""

from __future__ import annotations

from dataclasses import dataclass

from mm_adapter.encoders.config import FRAME_ORDERS, MAX_FRAMES
from mm_adapter.errors import ConfigError, MMAdapterError
from mm_adapter.fields import option
from mm_adapter.jobs.configs.training import TrainScienceQAConfig
from mm_adapter.methods.config import LLAMA_ADAPTER
from mm_adapter.model.config import GATE_ACTIVATIONS, GATE_INITS

NOTHING_TO_ABLATE = ("nothing to ablate: give values to at least one of --gate-inits, --layers, --lengths, "
                     "--activations (or with --images: --blanked, --frame-orders, --frame-counts)")


@dataclass
class AblateConfig(TrainScienceQAConfig):
    """The paper's ablations on ScienceQA: the training settings are the baseline; each variant changes one of them
    (gate init, adapter layers, adapter length, gate activation, with --images images vs blanked images and, for video
    clips, frame order and frame count), trains into OUT/<variant> and is scored by its best val accuracy; OUT gets
    table.md, table.json and table.png. The same command again skips finished variants and resumes a stopped one from its checkpoint (no --resume needed)."""

    out: str
    """output folder: one training run per variant (OUT/baseline, OUT/layers-16, ...), table.md, table.json,
    table.png, config.yaml"""
    gate_inits: list[str] = option(default_factory=lambda: list(GATE_INITS), nargs="*", choices=GATE_INITS)
    """gate initialisations compared (zero: zero-init attention; random: N(0, gate_init_std^2)); none: skip"""
    layers: list[int] = option(default_factory=lambda: [8, 16, 30], nargs="*", metavar="N")
    """adapter_layers values compared (the top N decoder layers adapted); none: skip"""
    lengths: list[int] = option(default_factory=lambda: [5, 10, 20], nargs="*", metavar="N")
    """adapter_len values compared (prompts per adapted layer); none: skip"""
    activations: list[str] = option(default_factory=lambda: list(GATE_ACTIVATIONS), nargs="*", choices=GATE_ACTIVATIONS)
    """gate activations compared; none: skip"""
    blanked: bool = True
    """with --images: also train with every image blanked (--blank-images) against the real images"""
    frame_orders: list[str] = option(default_factory=list, nargs="*", choices=FRAME_ORDERS)
    """with --images on video clips: frame orders compared (shuffled: each clip's frames in a fixed random order,
    so only what the frames show, not when, is left); none: skip"""
    frame_counts: list[int] = option(default_factory=list, nargs="*", metavar="K")
    """with --images on video clips: --frames values compared (1: the middle frame alone); none: skip"""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tuning.method != LLAMA_ADAPTER:
            raise ConfigError("method", f"the ablations vary the gates, layers and prompts of {LLAMA_ADAPTER}; "
                                        f"{self.tuning.method} has none")
        for name, known in (("gate_inits", GATE_INITS), ("activations", GATE_ACTIVATIONS)):
            unknown = [value for value in getattr(self, name) if value not in known]
            if unknown:
                raise ConfigError(name, f"must be among {', '.join(known)}, got {unknown[0]!r}")
        for name in ("layers", "lengths"):
            values = getattr(self, name)
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
                raise ConfigError(name, f"must be positive integers, got {values}")
        unknown = [value for value in self.frame_orders if value not in FRAME_ORDERS]
        if unknown:
            raise ConfigError("frame_orders", f"must be among {', '.join(FRAME_ORDERS)}, got {unknown[0]!r}")
        if not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_FRAMES for v in self.frame_counts):
            raise ConfigError("frame_counts", f"must be integers from 1 to {MAX_FRAMES}, got {self.frame_counts}")
        for name in ("frame_orders", "frame_counts"):
            if getattr(self, name) and not self.images:
                raise ConfigError(name, "compares the frames of video clips, which need --images")
        if not (self.gate_inits or self.layers or self.lengths or self.activations or self.frame_orders
                or self.frame_counts or (self.images and self.blanked)):
            raise MMAdapterError(NOTHING_TO_ABLATE)  # a setting of the command line: refused before the data
