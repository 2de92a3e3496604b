"""The visual path's settings: they travel in adapter files beside the adapter's (JSON round-trip, torch-free)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Tuple

from mm_adapter.errors import ConfigError
from mm_adapter.fields import check, check_type, config_from_dict, option
from mm_adapter.files.text import parse_json

PROJECTIONS = ("mlp", "linear")
ALLOW_DOWNLOAD_ENV = "MM_ADAPTER_ALLOW_DOWNLOAD"  # set to 1 to let an encoder spec download weights


FRAME_ORDERS = ("ordered", "shuffled")


MAX_FRAMES = 64  # frames per clip: the projection's last layer grows with them


def parse_depths(text: str) -> int | tuple[int, ...]:
    """Command-line form of ``clip_layers``: "4" (evenly spaced depths) or "6,12,18,24" (1-based depths)."""
    try:
        values = tuple(int(part) for part in str(text).replace(" ", ",").split(",") if part)
    except ValueError:
        raise ValueError(f"expected an int or a comma list of ints, got {text!r}") from None
    if not values:
        raise ValueError("expected an int or a comma list of ints, got nothing")
    return values[0] if len(values) == 1 else values


@dataclass(frozen=True)
class VisualConfig:
    """The visual path: a frozen open_clip encoder and the trainable projection into the adaption prompts.

    ``visual_standardize`` subtracts the training images' per-feature mean and divides by their std
    (buffers saved with the projection). It is needed with random-weight encoders: there the
    image-dependent part is ~3% of the features' variance (ViT-B-32 on the generated set), buried
    under a vector common to all images, and the projection did not learn.
    """

    clip_model: str = "ViT-L-14"
    """open_clip ViT name (paper: ViT-L-14)"""
    clip_pretrained: str | None = None
    """a local checkpoint file, or a pretrained tag such as openai (downloads: refused unless
    MM_ADAPTER_ALLOW_DOWNLOAD=1); None: random weights drawn from clip_seed"""
    # typing.Tuple: simple_parsing cannot read `tuple[int, ...]` inside a union
    clip_layers: int | Tuple[int, ...] = option(4, type=parse_depths, metavar="N|D1,D2,...")
    """N evenly spaced encoder depths ending at the last block, or explicit 1-based depths"""
    clip_seed: int = 0
    """seed of random encoder weights"""
    visual_projection: str = option("mlp", choices=PROJECTIONS)
    """mlp (LayerNorm, Linear to visual_hidden, GELU, Linear) or linear"""
    visual_hidden: int = 64
    """bottleneck width of the mlp projection"""
    visual_norm: bool = True
    """a learnable LayerNorm on the features before the projection"""
    visual_zero_init: bool = True
    """the projection's last layer starts at zero: training starts from the text-only adapter"""
    visual_standardize: bool = False
    """standardise features with the training images' mean/std (needed for random encoders)"""
    frames: int = 1
    """frames per video clip (GIF, MP4, WebM), sampled uniformly, each through the frozen encoder, side by side in
    order into the projection; a still image is held for all of them; 1: the still-image path (a clip gives its
    middle frame)"""
    frame_order: str = option("ordered", choices=FRAME_ORDERS)
    """ordered, or shuffled: each clip's frames in a fixed random order seeded by its bytes (the ablation that
    removes temporal order)"""

    # Fields added with video clips, left out of the JSON at these values: a still-image config is written exactly
    # as before they existed, so older readers read its adapter files and older runs resume.
    TEMPORAL_DEFAULTS = {"frames": 1, "frame_order": "ordered"}

    # Field names before they were made unique across the command line's flags; adapter files keep them.
    RENAMED = {"pretrained": "clip_pretrained", "layers": "clip_layers", "seed": "clip_seed",
               "projection": "visual_projection", "hidden_dim": "visual_hidden", "norm": "visual_norm",
               "zero_init": "visual_zero_init", "standardize": "visual_standardize"}

    def __post_init__(self) -> None:
        if isinstance(self.clip_layers, list):
            object.__setattr__(self, "clip_layers", tuple(self.clip_layers))
        depths = self.clip_layers if isinstance(self.clip_layers, tuple) else (self.clip_layers,)
        if not depths or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in depths):
            raise ConfigError("clip_layers", f"must be a positive int or a list of 1-based depths, got "
                                             f"{self.clip_layers!r}")
        check(self, "visual_projection", choices=PROJECTIONS)
        check(self, "visual_hidden", low=1, integer=True)
        check(self, "clip_seed", low=0, integer=True)
        check_type(self, "clip_model", str)
        check_type(self, "clip_pretrained", str, optional=True)
        for flag in ("visual_norm", "visual_zero_init", "visual_standardize"):
            check_type(self, flag, bool)
        check(self, "frames", low=1, high=MAX_FRAMES, integer=True)
        check(self, "frame_order", choices=FRAME_ORDERS)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["clip_layers"] = list(self.clip_layers) if isinstance(self.clip_layers, tuple) else self.clip_layers
        for name, default in self.TEMPORAL_DEFAULTS.items():
            if data[name] == default:
                del data[name]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any, source: str = "visual config") -> "VisualConfig":
        """Also reads the field names of files written before the rename (``RENAMED``)."""
        return config_from_dict(cls, data, source, "visual config", cls.RENAMED)

    @classmethod
    def from_json(cls, text: str, source: str = "visual config") -> "VisualConfig":
        return cls.from_dict(parse_json(text, source, "visual config", expect=dict), source)
