"""The training process around the loop: joining torchrun's process group, SIGINT/SIGTERM that stop at a step
boundary, and the fault injection the crash and stop tests use."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from mm_adapter.errors import MMAdapterError
from mm_adapter.training.config import TrainConfig

# Fault injection for the crash and stop tests: "N" SIGKILLs this process after step N, "N:SIGTERM" sends that signal.
KILL_ENV = "MM_ADAPTER_KILL_AT_STEP"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped training at a step boundary, after a checkpoint there; ``--resume`` continues.

    A ``KeyboardInterrupt``, so callers that handle Ctrl-C handle it; ``exit_code`` is the shell's
    128 + signal number (130 for SIGINT, 143 for SIGTERM), and ``str()`` is the one line to show.
    """

    def __init__(self, signal_number: int, step: int, total: int, checkpoint: Path):
        super().__init__(f"stopped by {signal.Signals(signal_number).name} after step {step} of {total}; checkpoint "
                         f"{checkpoint}; run the same command with --resume to continue")
        self.signal_number, self.step, self.checkpoint = signal_number, step, checkpoint

    @property
    def exit_code(self) -> int:
        return 128 + self.signal_number


class StopRequest:
    """A SIGINT/SIGTERM remembered, so training stops at the next step boundary; a second one stops at once."""

    def __init__(self, speak: bool = True) -> None:
        self.signal_number, self.speak = 0, speak  # speak: this process says so (rank 0 of a torchrun launch)

    def note(self, number: int, frame: object) -> None:
        """Say at once that the signal was heard (a step may take many seconds); a second one stops now."""
        if self.signal_number:
            raise KeyboardInterrupt
        self.signal_number = number
        if not self.speak:
            return
        key = "Ctrl-C" if number == signal.SIGINT else signal.Signals(number).name
        try:  # os.write: a handler may run in the middle of a print (the progress bar's), which print cannot re-enter
            lead = "\n" if os.isatty(sys.stderr.fileno()) else ""  # past a progress bar's line
            os.write(sys.stderr.fileno(), f"{lead}{key}: stopping after this step (a checkpoint there; --resume "
                                          f"continues); {key} again to stop now\n".encode())
        except (OSError, ValueError, AttributeError):  # no usable stderr: the stop itself still happens
            pass

    def agreed(self, info: DistInfo) -> int:
        """The signal that stops every rank at this step boundary (0: none); one small all-reduce under DDP."""
        if info.world_size == 1:
            return self.signal_number
        flag = torch.tensor([self.signal_number], device=info.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())


@contextlib.contextmanager
def stop_requests(speak: bool = True) -> Iterator[StopRequest]:
    """While inside (main thread only: Python runs signal handlers there), SIGINT/SIGTERM are noted (and, when
    ``speak``, acknowledged on stderr) instead of stopping the process; the previous handlers come back at the end."""
    request, previous = StopRequest(speak), {}
    if threading.current_thread() is threading.main_thread():
        previous = {number: signal.signal(number, request.note) for number in STOP_SIGNALS}
    try:
        yield request
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler if handler is not None else signal.SIG_DFL)


def setup_distributed(device: str | None = None) -> DistInfo:
    """Join the torchrun process group when launched by torchrun (NCCL on GPU, gloo on CPU)."""
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if use_cuda else "gloo")
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if use_cuda:
            torch.cuda.set_device(local_rank)
        target = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
        return DistInfo(dist.get_rank(), dist.get_world_size(), target)
    return DistInfo(0, 1, torch.device(device or ("cuda" if use_cuda else "cpu")))


def check_world_fits(identity: dict[str, Any] | None, config: TrainConfig, world_size: int) -> None:
    """A resumed run keeps its optimizer step: the checkpoint's M micro-batches of its batch size (its effective
    batch, M x batch). ``world_size`` processes continue it only if each takes M / world_size of them (its
    ``--accum-steps``); refuse, in one line saying what would fit, a world size that does not divide M or an
    ``--accum-steps`` that is not that quotient (before any weight is sharded or trained)."""
    saved = (identity or {}).get("micro_batches_per_step")
    if not isinstance(saved, int) or saved == config.accum_steps * world_size:
        return
    batch = (identity or {}).get("batch_size", config.batch_size)
    step = f"this run's optimizer steps are {saved} micro-batches of {batch} (effective batch {saved * batch})"
    if saved % world_size:
        raise MMAdapterError(f"cannot resume with {world_size} processes: {step}, which {world_size} processes "
                             f"cannot split evenly; resume with a number of processes that divides {saved}")
    raise MMAdapterError(f"cannot resume with --accum-steps {config.accum_steps}: {step}; with {world_size} "
                         f"process(es) pass --accum-steps {saved // world_size}")


def maybe_kill(step: int) -> None:
    at, _, name = os.environ.get(KILL_ENV, "").partition(":")
    if at == str(step):
        os.kill(os.getpid(), getattr(signal, name or "SIGKILL"))


def peak_memory_mb(device: torch.device) -> float:
    """This process's peak memory so far: the CUDA allocator's peak on a GPU, else the peak resident set size
    (what a comparison of methods' memory needs; ru_maxrss is in KiB on Linux)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
