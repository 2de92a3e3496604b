"""What every model job settles before its slow parts: CPU threads, a device this machine has, and an
output folder that overwrites none of its inputs and has no other writer."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch

from mm_adapter.data.config import ScienceQASource
from mm_adapter.errors import MMAdapterError
from mm_adapter.files.output_folder import Output, PathLike, check_no_overlap, output_folder
from mm_adapter.model.config import ModelOptions
from mm_adapter.training.trainer import bf16_supported, check_out_dir, check_run_state


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


def precision_line(model: torch.nn.Module, bf16: bool, device: torch.device | str) -> str:
    """The precision a job really runs in, printed at its start. The defaults differ by kind of command, on purpose:
    training autocasts to bf16 (the paper's mixed precision, ~2x faster) over its recipe's --dtype, while eval,
    generate, demo and serve answer in the weights' own precision, so a score or an answer does not depend on
    whether a device supports bf16; --dtype and --bf16/--no-bf16 set either in every command."""
    device = torch.device(device)
    dtype = str(model.get_input_embeddings().weight.dtype).removeprefix("torch.")
    autocast = "off" if not bf16 else "on" if bf16_supported(device) else f"off (not supported on {device})"
    return f"precision: base weights {dtype}, bf16 autocast {autocast} (--dtype, --bf16/--no-bf16)"


def rank_zero_print(is_main: bool):
    """``print`` on rank 0, nothing elsewhere: a torchrun job reports once."""
    return print if is_main else (lambda *args, **kwargs: None)


def finish_distributed() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def source_inputs(source: ScienceQASource) -> dict[str, str | None]:
    """The ScienceQA files a job reads, by flag (a folder stands for the files in it)."""
    return {"--data": source.data, "--hf": source.hf}


@contextmanager
def job_folder(out: PathLike, outputs: Iterable[Output], inputs: Mapping[str, PathLike | None], *,
               lock: bool = True, resume: bool | None = None) -> Iterator[Path]:
    """``out`` for the enclosed work, after the checks that write nothing (no output is an input, the folder can
    be written), then locked against a second writer; ``resume`` (training jobs) checks the run state in it.

    A job refused inside leaves no new folder behind. ``lock`` is off on the ranks > 0 of a torchrun job.
    """
    check_no_overlap(outputs, inputs)
    check_out_dir(out)
    with output_folder(out, lock=lock) as folder:
        if resume is not None:
            check_run_state(folder, resume)
        yield folder
