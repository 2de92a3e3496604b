"""Adapter configuration: a dataclass that round-trips through JSON (it travels in adapter files)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from .errors import MMAdapterError

GATE_ACTIVATIONS = ("tanh", "identity")
PROMPT_INITS = ("normal", "norm_scaled")


@dataclass(frozen=True)
class AdapterConfig:
    """LLaMA-Adapter hyper-parameters.

    adapter_len: learnable prompt vectors per adapted layer (paper: 10).
    adapter_layers: how many of the top decoder layers get prompts (paper: 30 of 32).
    gate_activation: "tanh" applies tanh to the zero-initialised gate (the official training
        code); "identity" uses the raw gate (the official inference code, and PEFT). One choice,
        used for training and inference alike.
    prompt_init_std: prompts start as N(0, std^2), like the original's nn.Embedding (std 1).
    prompt_init: "normal" (the original) or "norm_scaled": N(0, std^2) times the layer's input
        norm weight, so prompts look like the normalised hidden states the projections expect
        (SmolLM2's norm weights are ~0.03-0.4, so unit-scale prompts give keys 2-9x too large).
    """

    adapter_len: int = 10
    adapter_layers: int = 30
    gate_activation: str = "tanh"
    prompt_init_std: float = 1.0
    prompt_init: str = "normal"

    def __post_init__(self) -> None:
        if not isinstance(self.adapter_len, int) or self.adapter_len < 1:
            raise MMAdapterError(f"adapter_len must be a positive integer, got {self.adapter_len!r}")
        if not isinstance(self.adapter_layers, int) or self.adapter_layers < 1:
            raise MMAdapterError(f"adapter_layers must be a positive integer, got {self.adapter_layers!r}")
        if self.gate_activation not in GATE_ACTIVATIONS:
            raise MMAdapterError(
                f"gate_activation must be one of {', '.join(GATE_ACTIVATIONS)}, got {self.gate_activation!r}"
            )
        if self.prompt_init not in PROMPT_INITS:
            raise MMAdapterError(f"prompt_init must be one of {', '.join(PROMPT_INITS)}, got {self.prompt_init!r}")
        if not self.prompt_init_std > 0:
            raise MMAdapterError(f"prompt_init_std must be positive, got {self.prompt_init_std!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "AdapterConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise MMAdapterError(f"{source}: unknown adapter config field(s) {', '.join(unknown)}")
        return cls(**data)
