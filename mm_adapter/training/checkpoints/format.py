"""The training checkpoint folder: written so that a SIGKILL cannot corrupt it, read back and checked on its own.

A checkpoint is a folder ``step-NNNNNNNN`` holding ``tensors.safetensors`` (trainable parameters,
optimizer moments, RNG states) and ``state.json`` (step, scheduler, optimizer hyper-parameters,
the run's identity). It is written under a temporary name and renamed into place, so a folder
with the final name is always complete.

A folder can still be damaged after it was written (a disk error, a hand edit, a file copied from
another run), so reading one checks its files before anything uses them: state.json's fields and
types, the tensors file, finite values, and a Python RNG state a generator accepts. A bad one is a
:class:`CorruptCheckpoint` naming the file. Whether a checkpoint fits the live run, and putting it
back, is ``resume.py``.
"""

from __future__ import annotations

import json
import math
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from mm_adapter.errors import MMAdapterError
from mm_adapter.files.atomic import atomic_dir
from mm_adapter.files.safe_load import read_safetensors
from mm_adapter.files.text import loads_json

_STEP_DIR = re.compile(r"^step-(\d{8})$")
TENSORS, STATE = "tensors.safetensors", "state.json"
MAX_STATE_BYTES = 16 << 20  # a state.json is a few KB (optimizer groups, identity, Python RNG state)
STATE_FIELDS = {"step": int, "identity": dict, "scheduler": dict, "optimizer": dict, "rng": dict, "extra": dict}


@dataclass
class Checkpoint:
    path: Path
    step: int
    tensors: dict[str, torch.Tensor]
    state: dict[str, Any]


def checkpoint_dirs(folder: Path) -> list[Path]:
    """Complete checkpoints in ``folder``, oldest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [path for _, path in sorted(found)]


def step_dir(folder: Path, step: int) -> Path:
    """Where checkpoint ``step`` lives in ``folder``."""
    return folder / f"step-{step:08d}"


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors |= {f"rng.cuda.{i}": state for i, state in enumerate(torch.cuda.get_rng_state_all())}
    version, internal, gauss = random.getstate()
    return tensors, {"python_random": [version, list(internal), gauss]}


def restore_rng(tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[key] for key in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = state["python_random"]
    random.setstate((version, tuple(internal), gauss))


def _optimizer_split(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    saved = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entry in saved["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    # "tensors" lists what was saved, so a resume can tell a missing tensor from a parameter without state yet
    return tensors, {"param_groups": saved["param_groups"], "scalars": scalars,
                     "tensors": sorted(name.removeprefix("optim.") for name in tensors)}


def optimizer_join(tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> dict[str, Any]:
    entries: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            entries.setdefault(int(index), {})[key] = value
    for name, value in state["scalars"].items():
        index, key = name.split(".", 1)
        entries.setdefault(int(index), {})[key] = value
    return {"state": entries, "param_groups": state["param_groups"]}


def save_checkpoint(folder: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, identity: dict[str, Any],
                    extra: dict[str, Any] | None = None, keep: int = 2) -> Path:
    """Write checkpoint ``step`` atomically, then prune all but the newest ``keep``."""
    tensors = {f"param.{name}": p.detach().cpu().contiguous() for name, p in model.named_parameters()
               if p.requires_grad}
    optim_tensors, optim_state = _optimizer_split(optimizer)
    rng_tensors, rng_json = rng_state()
    state = {"step": step, "identity": identity, "scheduler": scheduler.state_dict(), "optimizer": optim_state,
             "rng": rng_json, "extra": extra or {}}
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".step-*"):  # staging folders of a run killed while saving
        shutil.rmtree(stale, ignore_errors=True)
    final = step_dir(folder, step)
    # overwrite: only after a resume that re-reached a step; same content by construction
    with atomic_dir(final, overwrite=True) as staging:
        save_file(tensors | optim_tensors | rng_tensors, str(staging / TENSORS))
        (staging / STATE).write_text(json.dumps(state, indent=1, sort_keys=True))
    for old in checkpoint_dirs(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


class CorruptCheckpoint(MMAdapterError):
    """A checkpoint file that cannot be what :func:`save_checkpoint` wrote (truncated, edited, mixed up)."""

    def __init__(self, path: Path, detail: str, advice: str = ""):
        super().__init__(f"{path}: corrupt checkpoint ({detail})" + (f"; {advice}" if advice else ""))
        self.path, self.detail = path, detail


def _kind_error(value: Any, kind: type | tuple[type, ...]) -> str | None:
    """Why ``value`` is not of ``kind`` (a bool is no number here), or None."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds):
        return None
    return f"is {type(value).__name__}, expected {' or '.join(k.__name__ for k in kinds)}"


def state_value(path: Path, where: str, value: Any, kind: type | tuple[type, ...]) -> Any:
    """``value`` if it is of ``kind``, else a :class:`CorruptCheckpoint` naming the file and the field."""
    problem = _kind_error(value, kind)
    if problem is not None:
        raise CorruptCheckpoint(path, f"{STATE}: {where} {problem}")
    return value


def state_field(path: Path, mapping: dict, key: str, kind: type | tuple[type, ...], where: str = "") -> Any:
    """``mapping[key]`` if it is there and of ``kind``, else a :class:`CorruptCheckpoint` naming the field."""
    if key not in mapping:
        raise CorruptCheckpoint(path, f"{STATE}: no {where}{key!r}")
    return state_value(path, f"{where}{key!r}", mapping[key], kind)


def read_state(path: Path) -> dict[str, Any]:
    """``state.json`` parsed and checked field by field: everything a resume reads, with the right types."""
    file = path / STATE
    if not file.is_file():
        raise CorruptCheckpoint(path, f"{STATE} is missing")
    if file.stat().st_size > MAX_STATE_BYTES:
        raise CorruptCheckpoint(path, f"{STATE} is {file.stat().st_size:,} bytes; ours are a few KB")
    try:
        state = loads_json(file.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise CorruptCheckpoint(path, f"{STATE} is unreadable: {str(error).splitlines()[0][:120]}") from None
    state_value(path, "the document", state, dict)
    for key, kind in STATE_FIELDS.items():
        state_field(path, state, key, kind)
    number = _STEP_DIR.match(path.name)
    if state["step"] < 1 or (number and int(number.group(1)) != state["step"]):
        raise CorruptCheckpoint(path, f"{STATE}: step {state['step']} does not match the folder name {path.name}")
    _check_optimizer_state(path, state["optimizer"])
    _check_rng_state(path, state["rng"])
    state_field(path, state["scheduler"], "last_epoch", int, "scheduler ")
    return state


def _check_optimizer_state(path: Path, optimizer: dict[str, Any]) -> None:
    """Groups of parameter positions with finite hyper-parameters, numeric scalars, a list of saved tensors."""
    for index, group in enumerate(state_field(path, optimizer, "param_groups", list, "optimizer ")):
        where = f"optimizer group {index} "
        state_value(path, where.strip(), group, dict)
        for position in state_field(path, group, "params", list, where):
            state_value(path, f"{where}'params' entry", position, int)
        for key in ("lr", "eps", "weight_decay"):
            if not math.isfinite(state_field(path, group, key, (int, float), where)):
                raise CorruptCheckpoint(path, f"{STATE}: {where}{key!r} is not finite")
    for key, value in state_field(path, optimizer, "scalars", dict, "optimizer ").items():
        state_value(path, f"optimizer scalar {key!r}", value, (int, float))
    state_value(path, "optimizer 'tensors'", optimizer.get("tensors", []), list)


def _check_rng_state(path: Path, rng: dict[str, Any]) -> None:
    """The Python RNG state must be one ``random.setstate`` accepts (tried on a scratch generator)."""
    try:
        version, internal, gauss = state_field(path, rng, "python_random", list, "rng ")
        random.Random().setstate((version, tuple(internal), gauss))
    except (TypeError, ValueError, OverflowError):
        raise CorruptCheckpoint(path, f"{STATE}: rng 'python_random' is not a Python random state") from None


def load_checkpoint(path: Path) -> Checkpoint:
    """Read one checkpoint and check its files on their own (``resume.check_restorable`` checks them against the
    model)."""
    state = read_state(path)
    if not (path / TENSORS).is_file():
        raise CorruptCheckpoint(path, f"{TENSORS} is missing")
    try:
        tensors = read_safetensors(path / TENSORS)[0]
    except MMAdapterError as error:
        raise CorruptCheckpoint(path, f"{TENSORS}: {str(error).removeprefix(f'{path / TENSORS}: ')}") from None
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CorruptCheckpoint(path, f"{TENSORS}: {name!r} holds NaN or infinite values")
    return Checkpoint(path, state["step"], tensors, state)
