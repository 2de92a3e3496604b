"""Training checkpoints that a SIGKILL cannot corrupt and a resume can continue exactly.

A checkpoint is a folder ``step-NNNNNNNN`` holding ``tensors.safetensors`` (trainable parameters,
optimizer moments, RNG states) and ``state.json`` (step, scheduler, optimizer hyper-parameters,
the run's identity). It is written under a temporary name and renamed into place, so a folder
with the final name is always complete. The identity (model, trainable shapes, data, every
setting that shapes the trajectory) must match on resume; otherwise nothing is touched.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from .atomic import atomic_dir
from .errors import MMAdapterError
from .safe_load import read_safetensors

_STEP_DIR = re.compile(r"^step-(\d{8})$")
TENSORS, STATE = "tensors.safetensors", "state.json"


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
    return tensors, {"param_groups": saved["param_groups"], "scalars": scalars}


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
    final = folder / f"step-{step:08d}"
    # overwrite: only after a resume that re-reached a step; same content by construction
    with atomic_dir(final, overwrite=True) as staging:
        save_file(tensors | optim_tensors | rng_tensors, str(staging / TENSORS))
        (staging / STATE).write_text(json.dumps(state, indent=1, sort_keys=True))
    for old in checkpoint_dirs(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path) -> Checkpoint:
    try:
        state = json.loads((path / STATE).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise MMAdapterError(f"{path}: unreadable checkpoint ({str(error).splitlines()[0][:120]})") from None
    tensors = read_safetensors(path / TENSORS)[0]
    return Checkpoint(path, int(state["step"]), tensors, state)


def check_identity(checkpoint: Checkpoint, identity: dict[str, Any]) -> None:
    """Refuse to resume a run whose settings, model or data differ from the checkpoint's."""
    saved = checkpoint.state["identity"]
    differ = sorted(key for key in saved.keys() | identity.keys() if saved.get(key) != identity.get(key))
    if differ:
        shown = "; ".join(f"{key}: checkpoint {_short(saved.get(key))}, now {_short(identity.get(key))}"
                          for key in differ[:3])
        raise MMAdapterError(f"{checkpoint.path}: checkpoint of an incompatible run ({shown}); resume with the "
                             "same settings, model and data, or write to another output folder")


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def restore_checkpoint(checkpoint: Checkpoint, model: nn.Module, optimizer: torch.optim.Optimizer,
                       scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
    """Copy trainable parameters, optimizer, scheduler and RNG states back (identity already checked)."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:
                parameter.copy_(checkpoint.tensors[f"param.{name}"])
    optimizer.load_state_dict(_optimizer_join(checkpoint.tensors, checkpoint.state["optimizer"]))
    scheduler.load_state_dict(checkpoint.state["scheduler"])
    restore_rng(checkpoint.tensors, checkpoint.state["rng"])
