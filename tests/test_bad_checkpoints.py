"""A damaged training checkpoint on --resume: one line naming it and the previous complete one, nothing touched.

Every file a resume reads is checked before anything changes: state.json (fields and types, the
step, optimizer groups, scheduler, Python RNG state), the tensors file (readable, every trainable
parameter and AdamW moment in the model's shapes, finite, the torch RNG state). Each bad case goes
through the job function (the library API) and ``mm-adapter train alpaca --resume`` in this
process; one goes through ``python -m mm_adapter`` in a real process. The validation log that
``train scienceqa`` reads on resume is checked as well.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_train_resume import same_layers

from mm_adapter import AdapterConfig, MMAdapterError, attach_adapter, load_base
from mm_adapter.jobs.validation import LOG_NAME, ValidationSelector, best_logged
from mm_adapter.training.checkpoints.format import STATE, TENSORS, CorruptCheckpoint, load_checkpoint
from mm_adapter.training.checkpoints.resume import restore_checkpoint
from mm_adapter.training.trainer import build_optimizer
from tiny_text import (
    REPO, alpaca_config, arguments, command_here, finetune_here, one_thread, records, tiny_base_folder,
    write_records,
)

NEWEST, PREVIOUS = "step-00000010", "step-00000009"  # one epoch of 40 records: 10 steps, checkpoints every 3, keep 2
PROMPT = "param.model.layers.3.self_attn.adapter.prompt"


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished one-epoch tiny run (its newest checkpoints: steps 9 and 10), the base and data it used."""
    folder = tmp_path_factory.mktemp("bad-checkpoints")
    base, data = tiny_base_folder(folder / "base"), write_records(folder / "data.json", records(40))
    run = folder / "run"
    assert finetune_here(base, data, run, epochs=1).steps == 10
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [PREVIOUS, NEWEST]
    return base, data, run


def snapshot(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def edit_state(change: Callable[[dict], object]) -> Callable[[Path], None]:
    def apply(checkpoint: Path) -> None:
        state = json.loads((checkpoint / STATE).read_text())
        change(state)
        (checkpoint / STATE).write_text(json.dumps(state))
    return apply


def edit_tensors(change: Callable[[dict], object]) -> Callable[[Path], None]:
    def apply(checkpoint: Path) -> None:
        tensors = load_file(checkpoint / TENSORS)
        change(tensors)
        save_file(tensors, checkpoint / TENSORS)
    return apply


def write(name: str, content: str) -> Callable[[Path], None]:
    return lambda checkpoint: (checkpoint / name).write_text(content)


def truncate(name: str, size: int | None = None) -> Callable[[Path], None]:
    """Cut ``name`` to half its size, or make it ``size`` bytes (sparse: instant even when huge)."""
    def apply(checkpoint: Path) -> None:
        path = checkpoint / name
        os.truncate(path, path.stat().st_size // 2 if size is None else size)
    return apply


def delete(name: str) -> Callable[[Path], None]:
    return lambda checkpoint: (checkpoint / name).unlink()


def put(key: str, value: Callable[[dict], torch.Tensor]) -> Callable[[Path], None]:
    return edit_tensors(lambda tensors: tensors.__setitem__(key, value(tensors)))


BAD = {  # case: (damage done to the newest checkpoint, what the one line must say about it)
    "state {}": (write(STATE, "{}"), "state.json: no 'step'"),
    "state a list": (write(STATE, "[]"), "the document is list, expected dict"),
    "state torn": (write(STATE, '{"step": 10, "ident'), "state.json is unreadable"),
    "state missing": (delete(STATE), "state.json is missing"),
    "state huge": (truncate(STATE, 17 << 20), "state.json is 17,825,792 bytes"),
    "step a string": (edit_state(lambda s: s.update(step="10")), "'step' is str, expected int"),
    "step of another folder": (edit_state(lambda s: s.update(step=9)), "step 9 does not match the folder name"),
    "no optimizer groups": (edit_state(lambda s: s["optimizer"].pop("param_groups")), "no optimizer 'param_groups'"),
    "optimizer groups reordered": (edit_state(lambda s: s["optimizer"]["param_groups"][0].update(params=[2, 1, 0])),
                                   "optimizer groups list parameters [2, 1, 0, 3, 4, 5], not 0 to 5 in order"),
    "lr infinite": (edit_state(lambda s: s["optimizer"]["param_groups"][0].update(lr=float("inf"))),
                    "Infinity is not a JSON number"),  # refused by the shared JSON parser, before the field check
    "optimizer scalar text": (edit_state(lambda s: s["optimizer"]["scalars"].update({"0.step": "x"})),
                              "optimizer scalar '0.step' is str"),
    "python rng garbage": (edit_state(lambda s: s["rng"].update(python_random=[3, [1, 2], None])),
                           "not a Python random state"),
    "scheduler foreign field": (edit_state(lambda s: s["scheduler"].update(step=3)),
                                "scheduler field 'step' is not the trainer's"),
    "scheduler at another step": (edit_state(lambda s: s["scheduler"].update(last_epoch=7)), "scheduler at step 7"),
    "scheduler field type": (edit_state(lambda s: s["scheduler"].update(_step_count="11")),
                             "scheduler '_step_count' is str, expected int"),
    "tensors missing": (delete(TENSORS), "tensors.safetensors is missing"),
    "tensors truncated": (truncate(TENSORS), "tensors.safetensors: not a readable safetensors file"),
    "parameter missing": (edit_tensors(lambda t: t.pop(PROMPT)), f"has no '{PROMPT}'"),
    "parameter shape": (put(PROMPT, lambda t: torch.zeros(3, 3)), "the model needs a float tensor"),
    "parameter integer": (put(PROMPT, lambda t: t[PROMPT].long()), "is int64"),
    "moment missing": (edit_tensors(lambda t: t.pop("optim.0.exp_avg")), "has no 'optim.0.exp_avg'"),
    "moment NaN": (put("optim.1.exp_avg", lambda t: torch.full_like(t["optim.1.exp_avg"], float("nan"))),
                   "'optim.1.exp_avg' holds NaN or infinite values"),
    "variance negative": (put("optim.0.exp_avg_sq", lambda t: -t["optim.0.exp_avg_sq"] - 1),
                          "'optim.0.exp_avg_sq' has negative values"),
    "moment of no parameter": (put("optim.99.exp_avg", lambda t: torch.zeros(1)), "'99.exp_avg' names no parameter"),
    "torch rng missing": (edit_tensors(lambda t: t.pop("rng.torch")), "'rng.torch' is missing or not a torch RNG"),
    "torch rng cut": (put("rng.torch", lambda t: t["rng.torch"][:100].clone()), "not a torch RNG state"),
}


def damaged(finished, tmp_path: Path, *damages: Callable[[Path], None]) -> Path:
    """A copy of the finished run whose newest checkpoint (then the previous one) got ``damages``."""
    run = tmp_path / "run"
    shutil.copytree(finished[2], run)
    for damage, name in zip(damages, (NEWEST, PREVIOUS)):
        damage(run / "checkpoints" / name)
    return run


def resume_argv(finished, run: Path) -> list[str]:
    base, data, _ = finished
    return ["train", "alpaca", *arguments(base, data, run, "--epochs", "1", "--resume")]


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_checkpoint_is_one_line_naming_it_and_the_previous_one(finished, tmp_path, capsys, case):
    """Each damage: the job function raises one line (the checkpoint, what is wrong, the previous complete
    checkpoint to fall back on); the command says the same on one stderr line with exit 2; no file changes."""
    damage, detail = BAD[case]
    base, data, _ = finished
    run = damaged(finished, tmp_path, damage)
    before = snapshot(run)
    with pytest.raises(CorruptCheckpoint) as raised:
        finetune_here(base, data, run, epochs=1, resume=True)
    message = str(raised.value)
    assert "\n" not in message and message.startswith(f"{run / 'checkpoints' / NEWEST}: corrupt checkpoint (")
    assert detail in message and f"resume from the previous complete checkpoint {PREVIOUS}" in message
    code, _, err = command_here(resume_argv(finished, run), capsys)
    assert (code, err) == (2, f"error: {message}\n")
    assert snapshot(run) == before


def test_without_a_complete_earlier_checkpoint_it_says_start_afresh(finished, tmp_path, capsys):
    """Both checkpoints damaged (in different ways): the line says no earlier one is complete."""
    run = damaged(finished, tmp_path, write(STATE, "{}"), delete(TENSORS))
    before = snapshot(run)
    code, _, err = command_here(resume_argv(finished, run), capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "no earlier checkpoint is complete; start afresh" in err and f"{NEWEST}: corrupt checkpoint" in err
    assert snapshot(run) == before


def test_following_the_advice_resumes_from_the_previous_checkpoint_to_the_same_adapter(finished, tmp_path):
    """Moving the bad checkpoint aside, as the line says, resumes from the previous one to bit-identical tensors;
    a checkpoint of the earlier format (no list of optimizer tensors in state.json) still resumes."""
    base, data, done = finished
    run = damaged(finished, tmp_path, write(STATE, "{}"), edit_state(lambda s: s["optimizer"].pop("tensors")))
    shutil.move(run / "checkpoints" / NEWEST, tmp_path / "set-aside")
    assert finetune_here(base, data, run, epochs=1, resume=True).steps == 10
    same_layers(done / "adapter.safetensors", run / "adapter.safetensors")


def test_restore_changes_nothing_when_a_later_part_is_bad(finished, tmp_path):
    """The library's restore checks everything first: a bad optimizer moment leaves the model's parameters as
    they were (no half-restored model)."""
    base, _, _ = finished
    run = damaged(finished, tmp_path, put("optim.5.exp_avg", lambda t: torch.zeros(2)))
    model, _ = load_base(str(base), dtype="fp32")
    attach_adapter(model, AdapterConfig(adapter_len=4, adapter_layers=3))
    optimizer = build_optimizer(model, alpaca_config(base, base, tmp_path).train, lr=2e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    before = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    with pytest.raises(MMAdapterError, match="'optim.5.exp_avg' is float32 \\[2\\], the model needs"):
        restore_checkpoint(load_checkpoint(run / "checkpoints" / NEWEST), model, optimizer, scheduler)
    assert all(torch.equal(before[name], p) for name, p in model.named_parameters() if p.requires_grad)


def test_the_command_in_a_real_process_refuses_a_corrupt_checkpoint_in_one_line(finished, tmp_path):
    """``python -m mm_adapter train alpaca --resume`` on a state.json of {} (the issue's case): exit 2, one line
    naming the checkpoint and the previous one, no traceback, every file unchanged."""
    run = damaged(finished, tmp_path, write(STATE, "{}"))
    before = snapshot(run)
    done = subprocess.run([sys.executable, "-m", "mm_adapter", *resume_argv(finished, run)], capture_output=True,
                          text=True, cwd=REPO, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"error: {run / 'checkpoints' / NEWEST}: corrupt checkpoint (state.json: no 'step')")
    assert PREVIOUS in done.stderr
    assert snapshot(run) == before


def test_the_validation_log_read_on_resume_is_checked_too(tmp_path):
    """train scienceqa's validation.jsonl (its best score so far, read on resume): a torn last line from a kill is
    ignored, any other bad line is one error naming the file and the line; a fresh run drops a stale log."""
    log = tmp_path / LOG_NAME
    rows = [json.dumps({"step": step, "epoch": 1.0, "val_acc": acc}) for step, acc in ((2, 0.5), (4, 0.75), (6, 0.75))]
    log.write_text("\n".join([*rows, '{"step": 8, "val_a']))
    assert best_logged(log) == (0.75, 4)
    selector = ValidationSelector(None, [], tmp_path, every=2, total_steps=10, resume=True)
    assert (selector.best, selector.best_step) == (0.75, 4)
    for bad in ('{"step": 3}', "not json", '{"step": "3", "val_acc": 0.5}', '{"step": 3, "val_acc": 7}'):
        log.write_text("\n".join([rows[0], bad, rows[1]]))
        with pytest.raises(MMAdapterError, match=f"^{log}: line 2 is not a validation row"):
            ValidationSelector(None, [], tmp_path, every=2, total_steps=10, resume=True)
    ValidationSelector(None, [], tmp_path, every=2, total_steps=10)
    assert not log.exists()
