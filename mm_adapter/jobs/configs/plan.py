"""The config of plan: a training recipe and the GPUs it would run on, to size it before any download."""

from __future__ import annotations

from dataclasses import dataclass

from mm_adapter.fields import check, check_positive, option


@dataclass
class PlanConfig:
    """What a training recipe needs, before any download: the model laid out on the meta device (no weights),
    trainable and frozen parameter counts, per-GPU memory (weights, adapter, optimizer state, activations: an
    estimate), tokens per epoch, and how many GPUs of a given memory it takes."""

    recipe: str = option(positional=True, metavar="RECIPE")
    """a recipe name, as --config takes it (alpaca-llama7b, scienceqa-llama7b-vitl14, alpaca-llama65b-fsdp, ...;
    the older llama7b-alpaca works too), or a recipe / config.yaml file"""
    gpus: int = 8
    """GPUs the run uses (the paper's 8): the per-GPU share under fsdp, the effective batch, the lr, the steps"""
    gpu_memory: float = 80.0
    """memory of one GPU in GiB (80: an A100/H100 80GB)"""

    def __post_init__(self) -> None:
        check_positive(self, "gpus")
        check(self, "gpu_memory", low=0, low_open=True)
