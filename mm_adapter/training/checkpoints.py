"""Training checkpoints that a SIGKILL cannot corrupt and a resume can continue exactly.

A checkpoint is a folder ``step-NNNNNNNN`` holding ``tensors.safetensors`` (trainable parameters,
optimizer moments, RNG states) and ``state.json`` (step, scheduler, optimizer hyper-parameters,
the run's identity). It is written under a temporary name and renamed into place, so a folder
with the final name is always complete. The identity (model, trainable shapes, data, every
setting that shapes the trajectory) must match on resume; otherwise nothing is touched.

A folder can still be damaged after it was written (a disk error, a hand edit, a file copied from
another run), so a resume checks every file it reads before changing anything: state.json's
fields and types, the tensors file, every tensor the restore needs in the model's shapes, finite
values, and RNG states a generator accepts. A bad one is one line naming it and the previous
complete checkpoint to fall back on (:func:`resume_checkpoint`).
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
_MOMENTS = ("exp_avg", "exp_avg_sq")  # AdamW's per-parameter state besides "step"


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


def _optimizer_join(tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> dict[str, Any]:
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


def _need(path: Path, where: str, value: Any, kind: type | tuple[type, ...]) -> Any:
    """``value`` if it is of ``kind``, else a :class:`CorruptCheckpoint` naming the file and the field."""
    problem = _kind_error(value, kind)
    if problem is not None:
        raise CorruptCheckpoint(path, f"{STATE}: {where} {problem}")
    return value


def _field(path: Path, mapping: dict, key: str, kind: type | tuple[type, ...], where: str = "") -> Any:
    if key not in mapping:
        raise CorruptCheckpoint(path, f"{STATE}: no {where}{key!r}")
    return _need(path, f"{where}{key!r}", mapping[key], kind)


def _read_state(path: Path) -> dict[str, Any]:
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
    _need(path, "the document", state, dict)
    for key, kind in STATE_FIELDS.items():
        _field(path, state, key, kind)
    number = _STEP_DIR.match(path.name)
    if state["step"] < 1 or (number and int(number.group(1)) != state["step"]):
        raise CorruptCheckpoint(path, f"{STATE}: step {state['step']} does not match the folder name {path.name}")
    _check_optimizer_state(path, state["optimizer"])
    _check_rng_state(path, state["rng"])
    _field(path, state["scheduler"], "last_epoch", int, "scheduler ")
    return state


def _check_optimizer_state(path: Path, optimizer: dict[str, Any]) -> None:
    """Groups of parameter positions with finite hyper-parameters, numeric scalars, a list of saved tensors."""
    for index, group in enumerate(_field(path, optimizer, "param_groups", list, "optimizer ")):
        where = f"optimizer group {index} "
        _need(path, where.strip(), group, dict)
        for position in _field(path, group, "params", list, where):
            _need(path, f"{where}'params' entry", position, int)
        for key in ("lr", "eps", "weight_decay"):
            if not math.isfinite(_field(path, group, key, (int, float), where)):
                raise CorruptCheckpoint(path, f"{STATE}: {where}{key!r} is not finite")
    for key, value in _field(path, optimizer, "scalars", dict, "optimizer ").items():
        _need(path, f"optimizer scalar {key!r}", value, (int, float))
    _need(path, "optimizer 'tensors'", optimizer.get("tensors", []), list)


def _check_rng_state(path: Path, rng: dict[str, Any]) -> None:
    """The Python RNG state must be one ``random.setstate`` accepts (tried on a scratch generator)."""
    try:
        version, internal, gauss = _field(path, rng, "python_random", list, "rng ")
        random.Random().setstate((version, tuple(internal), gauss))
    except (TypeError, ValueError, OverflowError):
        raise CorruptCheckpoint(path, f"{STATE}: rng 'python_random' is not a Python random state") from None


def load_checkpoint(path: Path) -> Checkpoint:
    """Read one checkpoint and check its files on their own (see :func:`check_restorable` for the model)."""
    state = _read_state(path)
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


def saved_identity(folder: Path) -> dict[str, Any] | None:
    """The run identity of the newest checkpoint in ``folder``, read before anything heavy (None: no checkpoint, or
    a damaged one, which the resume itself reports)."""
    found = checkpoint_dirs(folder)
    try:
        return _read_state(found[-1])["identity"] if found else None
    except CorruptCheckpoint:
        return None


def check_identity(checkpoint: Checkpoint, identity: dict[str, Any]) -> None:
    """Refuse to resume a run whose settings, model or data differ from the checkpoint's."""
    differ = _differences(checkpoint.state["identity"], identity)
    if differ:
        shown = "; ".join(f"{key}: checkpoint {_short(was)}, now {_short(now)}" for key, was, now in differ[:3])
        raise MMAdapterError(f"{checkpoint.path}: checkpoint of an incompatible run ({shown}); resume with the "
                             "same settings, model and data, or write to another output folder")


def _differences(saved: dict[str, Any], now: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, saved value, value now)`` of each differing setting; where both are objects, of each differing field
    inside (``method_sizes.v2_targets``), so the line names what changed rather than two truncated objects."""
    found = []
    for key in sorted(saved.keys() | now.keys()):
        was, new = saved.get(key), now.get(key)
        if was == new:
            continue
        if isinstance(was, dict) and isinstance(new, dict):
            found += [(f"{key}.{inner}", was.get(inner), new.get(inner)) for inner in sorted(was.keys() | new.keys())
                      if was.get(inner) != new.get(inner)]
        else:
            found.append((key, was, new))
    return found


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def _tensor(checkpoint: Checkpoint, name: str, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Tensor ``name`` of the checkpoint, a floating tensor of ``shape``, or a :class:`CorruptCheckpoint`."""
    tensor = checkpoint.tensors.get(name)
    if tensor is None:
        raise CorruptCheckpoint(checkpoint.path, f"{TENSORS} has no {name!r}")
    if tuple(tensor.shape) != tuple(shape) or not tensor.is_floating_point():
        raise CorruptCheckpoint(checkpoint.path, f"{TENSORS}: {name!r} is {str(tensor.dtype).removeprefix('torch.')} "
                                f"{list(tensor.shape)}, the model needs a float tensor {list(shape)}")
    return tensor


def _optimizer_positions(checkpoint: Checkpoint, count: int) -> set[int]:
    """Parameter positions with saved optimizer state (listed in state.json, or found in the files), each one
    of the ``count`` parameters; ``_optimizer_join`` parses these names."""
    saved = checkpoint.state["optimizer"]
    listed = [_need(checkpoint.path, "optimizer 'tensors' entry", name, str) for name in saved.get("tensors", [])]
    present = [name.removeprefix("optim.") for name in checkpoint.tensors if name.startswith("optim.")]
    positions = set()
    for name in [*listed, *present, *saved["scalars"]]:
        index, _, key = name.partition(".")
        if not index.isdigit() or int(index) >= count or not key:
            raise CorruptCheckpoint(checkpoint.path, f"optimizer state {name!r} names no parameter of the model's "
                                    f"{count}")
        positions.add(int(index))
    return positions


def _check_optimizer_fits(checkpoint: Checkpoint, optimizer: torch.optim.Optimizer) -> None:
    """Groups of the live optimizer's sizes, and AdamW moments of each parameter's shape (finite, variances >= 0)."""
    groups = checkpoint.state["optimizer"]["param_groups"]
    saved, live = [len(group["params"]) for group in groups], [len(group["params"]) for group in optimizer.param_groups]
    if saved != live:
        raise CorruptCheckpoint(checkpoint.path, f"{STATE}: optimizer groups of {saved} parameters, the model's "
                                f"optimizer has {live}")
    positions = [position for group in groups for position in group["params"]]
    if positions != list(range(len(positions))):  # load_state_dict pairs them with the live parameters in order
        raise CorruptCheckpoint(checkpoint.path, f"{STATE}: optimizer groups list parameters {positions}, not "
                                f"0 to {len(positions) - 1} in order")
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    for index in _optimizer_positions(checkpoint, len(parameters)):
        for key in _MOMENTS:
            _tensor(checkpoint, f"optim.{index}.{key}", parameters[index].shape)
        if (checkpoint.tensors[f"optim.{index}.exp_avg_sq"] < 0).any():
            raise CorruptCheckpoint(checkpoint.path, f"{TENSORS}: {f'optim.{index}.exp_avg_sq'!r} has negative values")
        if f"{index}.step" not in checkpoint.state["optimizer"]["scalars"]:
            _tensor(checkpoint, f"optim.{index}.step", ())


def _check_scheduler_fits(checkpoint: Checkpoint, scheduler: torch.optim.lr_scheduler.LRScheduler,
                          groups: int) -> None:
    """Only the fields the live scheduler has (``load_state_dict`` sets any other as an attribute), of its types,
    at the checkpoint's step, with one learning rate per optimizer group."""
    saved, live, path = checkpoint.state["scheduler"], scheduler.state_dict(), checkpoint.path
    for key, value in saved.items():
        if key not in live:
            raise CorruptCheckpoint(path, f"{STATE}: scheduler field {key!r} is not the trainer's")
        if live[key] is not None and not isinstance(live[key], list):
            _need(path, f"scheduler {key!r}", value, (int, float) if isinstance(live[key], float) else type(live[key]))
    if saved["last_epoch"] != checkpoint.step:
        raise CorruptCheckpoint(path, f"{STATE}: scheduler at step {saved['last_epoch']}, checkpoint at "
                                f"{checkpoint.step}")
    for key, kind in (("base_lrs", (int, float)), ("_last_lr", (int, float)), ("lr_lambdas", (dict, type(None)))):
        if key not in saved and key != "base_lrs":  # base_lrs is needed; the others only checked when there
            continue
        values = _field(path, saved, key, list, "scheduler ")
        if len(values) != groups:
            raise CorruptCheckpoint(path, f"{STATE}: scheduler {key!r} has {len(values)} entries, not {groups}")
        for value in values:
            _need(path, f"scheduler {key!r} entry", value, kind)


def _check_rng_tensors(checkpoint: Checkpoint) -> None:
    """The torch RNG state must be one a generator accepts (tried on a scratch generator)."""
    state = checkpoint.tensors.get("rng.torch")
    try:
        torch.Generator().set_state(state)
    except (RuntimeError, TypeError):
        raise CorruptCheckpoint(checkpoint.path, f"{TENSORS}: 'rng.torch' is missing or not a torch RNG state") \
            from None
    for name in (n for n in checkpoint.tensors if n.startswith("rng.cuda.")):
        if checkpoint.tensors[name].dtype != torch.uint8:
            raise CorruptCheckpoint(checkpoint.path, f"{TENSORS}: {name!r} is not a CUDA RNG state")


def check_restorable(checkpoint: Checkpoint, model: nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
    """Everything :func:`restore_checkpoint` copies is there, in the live model's shapes; nothing is changed."""
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            _tensor(checkpoint, f"param.{name}", parameter.shape)
    _check_optimizer_fits(checkpoint, optimizer)
    _check_scheduler_fits(checkpoint, scheduler, len(optimizer.param_groups))
    _check_rng_tensors(checkpoint)


def restore_checkpoint(checkpoint: Checkpoint, model: nn.Module, optimizer: torch.optim.Optimizer,
                       scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
    """Copy trainable parameters, optimizer, scheduler and RNG states back (identity already checked).

    Everything is checked first (:func:`check_restorable`), so a bad checkpoint changes nothing.
    """
    check_restorable(checkpoint, model, optimizer, scheduler)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:
                parameter.copy_(checkpoint.tensors[f"param.{name}"])
    optimizer.load_state_dict(_optimizer_join(checkpoint.tensors, checkpoint.state["optimizer"]))
    scheduler.load_state_dict(checkpoint.state["scheduler"])
    restore_rng(checkpoint.tensors, checkpoint.state["rng"])


def _checked(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
             scheduler: torch.optim.lr_scheduler.LRScheduler, identity: dict[str, Any]) -> Checkpoint:
    """Checkpoint ``path`` read and checked: its files, the run's identity, everything the restore needs."""
    checkpoint = load_checkpoint(path)
    check_identity(checkpoint, identity)
    check_restorable(checkpoint, model, optimizer, scheduler)
    return checkpoint


def _usable(path: Path, *live: Any) -> bool:
    try:
        _checked(path, *live)
    except MMAdapterError:
        return False
    return True


def _way_out(older: list[Path], *live: Any) -> str:
    """What to do about a corrupt newest checkpoint: name the newest older one that would resume, if any."""
    previous = next((path for path in reversed(older) if _usable(path, *live)), None)
    if previous is None:
        return "no earlier checkpoint is complete; start afresh (without --resume, in another output folder)"
    return (f"move it aside to resume from the previous complete checkpoint {previous.name}, or start afresh "
            "(without --resume, in another output folder)")


def resume_checkpoint(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                      scheduler: torch.optim.lr_scheduler.LRScheduler, identity: dict[str, Any]) -> Checkpoint:
    """Restore the newest checkpoint in ``folder`` after checking every file it reads.

    A corrupt one is one line naming it and the previous complete checkpoint (or saying there is
    none); a checkpoint of another run is refused by :func:`check_identity`. Nothing is changed
    unless everything checks out.
    """
    found = checkpoint_dirs(folder)
    try:
        checkpoint = _checked(found[-1], model, optimizer, scheduler, identity)
    except CorruptCheckpoint as error:
        advice = _way_out(found[:-1], model, optimizer, scheduler, identity)
        raise CorruptCheckpoint(error.path, error.detail, advice) from None
    restore_checkpoint(checkpoint, model, optimizer, scheduler)
    return checkpoint
