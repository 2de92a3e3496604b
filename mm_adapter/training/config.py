"""The trainer's settings (torch-free, so the command line can build flags from it without importing torch)."""

from __future__ import annotations

from dataclasses import dataclass

from mm_adapter.errors import ConfigError
from mm_adapter.fields import check, check_positive, check_type, option

STRATEGIES = ("auto", "ddp", "fsdp")

# Absurd counts refused at the flag (exit 2 naming it) instead of running for ever or failing at allocation: a
# step of 2^20 examples, or 10,000 passes over the data, is no run anyone means.
MAX_COUNTS = {"epochs": 10_000, "batch_size": 1 << 20, "accum_steps": 1 << 20}

@dataclass
class TrainConfig:
    """Optimisation, schedule, precision and checkpointing of one training run."""

    epochs: int = 5
    """passes over the training examples"""
    max_steps: int | None = None
    """stop after this many optimizer steps, if that comes before the end of --epochs; the warmup and cosine
    schedule end there too (None: run every epoch)"""
    warmup_epochs: float = 2.0
    """linear warmup length in epochs (then half-cycle cosine down to min_lr)"""
    batch_size: int = 4
    """micro-batch per device"""
    accum_steps: int = 1
    """micro-batches accumulated per optimizer step (per device)"""
    lr: float | None = None
    """absolute learning rate; None: base_lr x effective batch / 256 (the original's rule)"""
    base_lr: float = 9e-3
    """learning rate per 256 examples, used when lr is None"""
    min_lr: float = 0.0
    """learning rate at the end of the cosine"""
    weight_decay: float = 0.02
    """AdamW weight decay on prompts and matrices (never on gates, biases, norms)"""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas"""
    grad_clip: float | None = None
    """clip the gradient norm to this value (None: no clipping)"""
    bf16: bool = True
    """bf16 autocast where the device supports it (the paper's mixed precision; eval, generate, demo and serve
    default to off; the precision used is printed at the start)"""
    seed: int = 0
    """seed of the data order and of the adapter's initialisation"""
    group_batches: int = 64
    """length-grouping window, in micro-batches (similar lengths batched together, less padding)"""
    checkpoint_every: int = 100
    """optimizer steps between checkpoints (one is also written at the end)"""
    keep_checkpoints: int = 2
    """newest checkpoints kept on disk"""
    resume: bool = False
    """continue the run in the output folder from its last checkpoint"""
    progress: bool = True
    """show progress (a bar on a terminal, a line every ~10% otherwise)"""
    strategy: str = option("auto", choices=STRATEGIES)
    """how the processes of a torchrun launch share the base: ddp keeps a whole copy on each; fsdp splits the frozen
    base over them (each loads only its part from safetensors files; for bases too big for one device); auto: fsdp
    when launched with several processes and the base's bf16 weights exceed half of one device's memory, else ddp"""
    activation_checkpointing: bool = False
    """recompute each decoder layer in the backward instead of keeping its activations (less memory, ~1/3 more
    compute; the result is the same)"""

    # Settings that do not change the trajectory, so a resume may change them (a checkpoint written under either
    # strategy resumes under the other: the adapter and its optimizer state are saved whole either way).
    NON_IDENTITY = ("checkpoint_every", "keep_checkpoints", "resume", "progress", "accum_steps", "strategy",
                    "activation_checkpointing")

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        for name in ("epochs", "batch_size", "accum_steps", "group_batches", "checkpoint_every", "keep_checkpoints"):
            check(self, name, low=1, high=MAX_COUNTS.get(name), integer=True)
        check_positive(self, "max_steps")
        check(self, "warmup_epochs", low=0)
        check(self, "lr", low=0, low_open=True, optional=True)
        check(self, "base_lr", low=0, low_open=True)
        check(self, "min_lr", low=0)
        check(self, "weight_decay", low=0)
        check(self, "grad_clip", low=0, low_open=True, optional=True)
        check(self, "seed", low=0, integer=True)
        check(self, "strategy", choices=STRATEGIES)
        check_type(self, "activation_checkpointing", bool)
        if len(self.betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in self.betas):
            raise ConfigError("betas", f"must be two numbers in [0, 1), got {list(self.betas)}")
