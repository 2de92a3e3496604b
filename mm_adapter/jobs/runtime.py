"""What every model job settles before its slow parts: CPU threads and a device this machine has."""

from __future__ import annotations

import torch

from ..errors import MMAdapterError
from .options import ModelOptions


def use_threads(threads: int | None) -> None:
    """torch's CPU threads; on a shared machine oversubscribed BLAS threads make every step ~10x slower."""
    if threads is not None:
        torch.set_num_threads(threads)


def resolve_device(device: str | None) -> torch.device:
    """``device`` (default: cuda if available, else cpu), refused in one line if this machine lacks it."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        found = torch.device(device)
    except (RuntimeError, ValueError):
        raise MMAdapterError(f"--device {device}: not a torch device (cpu, cuda, cuda:1, ...)") from None
    if found.type == "cuda":
        if not torch.cuda.is_available():
            raise MMAdapterError(f"--device {device}: this machine has no CUDA device")
        if found.index is not None and found.index >= torch.cuda.device_count():
            raise MMAdapterError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif found.type not in ("cpu", "mps", "xpu"):
        raise MMAdapterError(f"--device {device}: unsupported device type {found.type!r}")
    return found


def prepare(model: ModelOptions) -> torch.device:
    """Threads and device of a job, settled before any slow work."""
    use_threads(model.threads)
    return resolve_device(model.device)


def rank_zero_print(is_main: bool):
    """``print`` on rank 0, nothing elsewhere: a torchrun job reports once."""
    return print if is_main else (lambda *args, **kwargs: None)


def finish_distributed() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
