"""Resuming a run from its checkpoints, exactly, or refusing to before anything is changed.

The identity (model, trainable shapes, data, every setting that shapes the trajectory) must match on
resume; otherwise nothing is touched. Beyond what reading a checkpoint checks (``format.py``), a resume
checks that every tensor the restore needs is there in the model's shapes, that the optimizer and
scheduler states fit the live ones, and that the torch RNG state is one a generator accepts. A bad
checkpoint is one line naming it and the previous complete checkpoint to fall back on
(:func:`resume_checkpoint`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mm_adapter.errors import MMAdapterError
from mm_adapter.training.checkpoints.format import (
    STATE, TENSORS, Checkpoint, CorruptCheckpoint, checkpoint_dirs, load_checkpoint, optimizer_join, read_state,
    restore_rng, state_field, state_value,
)

_MOMENTS = ("exp_avg", "exp_avg_sq")  # AdamW's per-parameter state besides "step"


def saved_identity(folder: Path) -> dict[str, Any] | None:
    """The run identity of the newest checkpoint in ``folder``, read before anything heavy (None: no checkpoint, or
    a damaged one, which the resume itself reports)."""
    found = checkpoint_dirs(folder)
    try:
        return read_state(found[-1])["identity"] if found else None
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
    of the ``count`` parameters; ``optimizer_join`` parses these names."""
    saved = checkpoint.state["optimizer"]
    listed = [state_value(checkpoint.path, "optimizer 'tensors' entry", name, str) for name in saved.get("tensors", [])]
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
            expected = (int, float) if isinstance(live[key], float) else type(live[key])
            state_value(path, f"scheduler {key!r}", value, expected)
    if saved["last_epoch"] != checkpoint.step:
        raise CorruptCheckpoint(path, f"{STATE}: scheduler at step {saved['last_epoch']}, checkpoint at "
                                f"{checkpoint.step}")
    for key, kind in (("base_lrs", (int, float)), ("_last_lr", (int, float)), ("lr_lambdas", (dict, type(None)))):
        if key not in saved and key != "base_lrs":  # base_lrs is needed; the others only checked when there
            continue
        values = state_field(path, saved, key, list, "scheduler ")
        if len(values) != groups:
            raise CorruptCheckpoint(path, f"{STATE}: scheduler {key!r} has {len(values)} entries, not {groups}")
        for value in values:
            state_value(path, f"scheduler {key!r} entry", value, kind)


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
    optimizer.load_state_dict(optimizer_join(checkpoint.tensors, checkpoint.state["optimizer"]))
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
