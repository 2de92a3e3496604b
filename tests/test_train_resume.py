"""Crash safety and reproducibility of the Alpaca training job: SIGKILL mid-run, resume, same adapter as a run
never killed; the written config.yaml reproduces a run; bad input is one line from the command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch
import yaml

from mm_adapter import read_adapter
from mm_adapter.cli.commands import find
from mm_adapter.cli.parse import parse
from mm_adapter.training.process import KILL_ENV
from entry_point import MM_ADAPTER
from tiny_text import (
    REPO, alpaca_config, arguments, command_here, finetune_here, records, tiny_base_folder, write_records,
)


def finetune(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    """``mm-adapter train alpaca`` in a fresh process (what a user runs, and what SIGKILL can hit)."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([MM_ADAPTER, "train", "alpaca", *arguments(*args)], capture_output=True, text=True,
                          env=environment, cwd=REPO, timeout=300)


def same_layers(expected_path, got_path) -> None:
    expected, got = read_adapter(expected_path).layers, read_adapter(got_path).layers
    assert expected.keys() == got.keys()
    for index in expected:
        for name in ("prompt", "gate"):
            assert torch.equal(expected[index][name], got[index][name]), (index, name)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resume")
    return tiny_base_folder(folder / "base"), write_records(folder / "data.json", records(40))


@pytest.fixture(scope="module")
def whole(tiny_run, tmp_path_factory):
    """One uninterrupted tiny run through the job function (20 steps)."""
    base, data = tiny_run
    out = tmp_path_factory.mktemp("whole") / "run"
    result = finetune_here(base, data, out)
    assert result.steps == 20 and result.adapter_path == out / "adapter.safetensors"
    return out


def test_flags_and_job_config_are_the_same_run(tiny_run, tmp_path):
    """The flags the killed subprocess gets parse to exactly the config the in-process runs use."""
    base, data = tiny_run
    command = find(["train", "alpaca"])[0]
    assert parse(command, arguments(base, data, tmp_path / "x")) == alpaca_config(base, data, tmp_path / "x")
    assert parse(command, arguments(base, data, tmp_path / "x", "--resume")) == alpaca_config(
        base, data, tmp_path / "x", resume=True)


def test_sigkill_then_resume_equals_uninterrupted(tiny_run, whole, tmp_path):
    """Killed by SIGKILL after step 5 (last checkpoint: step 3), resumed: bit-identical final adapter tensors."""
    base, data = tiny_run
    killed = finetune(base, data, tmp_path / "killed", env={KILL_ENV: "5"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    checkpoints = tmp_path / "killed" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-00000003"]  # no half-written folder left
    assert not (tmp_path / "killed" / "adapter.safetensors").exists()
    assert finetune_here(base, data, tmp_path / "killed", resume=True).steps == 20
    same_layers(whole / "adapter.safetensors", tmp_path / "killed" / "adapter.safetensors")
    steps = [line for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == 20  # steps 4-5 of the killed run were dropped and redone, not duplicated
    # the resume kept the config.yaml of the run's first part: it still reproduces the whole run from scratch
    assert yaml.safe_load((tmp_path / "killed" / "config.yaml").read_text())["train"]["resume"] is False


def test_written_config_reproduces_the_run(whole, tmp_path, capsys):
    """`train alpaca --config OUT/config.yaml --out OTHER` is the same run: same settings, bit-identical adapter."""
    written = yaml.safe_load((whole / "config.yaml").read_text())
    assert written["command"] == "train alpaca" and written["out"] == str(whole)
    assert written["adapter"]["adapter_len"] == 4 and written["train"]["lr"] == 2e-2
    assert (whole / "config.yaml").read_text().startswith(f"# mm-adapter train alpaca --config {whole / 'config.yaml'}")
    code, out, err = command_here(["train", "alpaca", "--config", str(whole / "config.yaml"),
                                   "--out", str(tmp_path / "again")], capsys)
    assert code == 0, err
    assert "done: 20 steps" in out
    same_layers(whole / "adapter.safetensors", tmp_path / "again" / "adapter.safetensors")
    again = yaml.safe_load((tmp_path / "again" / "config.yaml").read_text())
    assert again == {**written, "out": str(tmp_path / "again")}


def test_script_errors_are_one_line(tiny_run, tmp_path, capsys):
    """Bad data and an incompatible resume print one 'error:' line and exit 2, leaving the run untouched
    (and a refused fresh run leaves no output folder behind)."""
    base, data = tiny_run
    bad = write_records(tmp_path / "bad.json", records(3) + [{"instruction": "x", "input": "", "output": ""}])
    code, _, err = command_here(["train", "alpaca", *arguments(base, bad, tmp_path / "out", "--strict")], capsys)
    assert code == 2 and err.strip().count("\n") == 0  # --strict: by default a bad record is skipped and counted
    assert "bad.json: record 3: field 'output' is empty" in err and err.startswith("error: ")
    assert not (tmp_path / "out").exists()
    assert finetune_here(base, data, tmp_path / "run", epochs=1).steps == 10
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    code, _, err = command_here(["train", "alpaca", *arguments(base, data, tmp_path / "run", "--epochs", "1",
                                                             "--lr", "1e-3", "--resume")], capsys)
    last_line = err.strip().splitlines()[-1]
    assert code == 2 and last_line.startswith("error: ") and "lr: checkpoint 0.02, now 0.001" in last_line
    assert {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()} == before
    code, _, err = command_here(["train", "alpaca", *arguments(base, data, tmp_path / "other", "--batch-size", "0")],
                                capsys)  # a bad value is refused by the config, under its flag's name
    assert code == 2 and err.strip() == "error: --batch-size: must be >= 1, got 0" and not (tmp_path / "other").exists()
