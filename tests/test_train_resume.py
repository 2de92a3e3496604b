"""Crash safety of scripts/finetune_alpaca.py: SIGKILL mid-run, --resume, same adapter as a run never killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch
from tiny_text import REPO, SCRIPT, arguments, finetune_here, records, tiny_base_folder, write_records

from mm_adapter import read_adapter
from mm_adapter.train import KILL_ENV


def finetune(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    """The script in a fresh process (what a user runs, and what SIGKILL can hit)."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, str(SCRIPT), *arguments(*args)], capture_output=True, text=True,
                          env=environment, cwd=REPO, timeout=300)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resume")
    return tiny_base_folder(folder / "base"), write_records(folder / "data.json", records(40))


def test_sigkill_then_resume_equals_uninterrupted(tiny_run, tmp_path):
    """Killed by SIGKILL after step 5 (last checkpoint: step 3), resumed: bit-identical final adapter tensors."""
    base, data = tiny_run
    assert finetune_here(base, data, tmp_path / "whole")[0] == 0
    killed = finetune(base, data, tmp_path / "killed", env={KILL_ENV: "5"})
    assert killed.returncode == -signal.SIGKILL
    checkpoints = tmp_path / "killed" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-00000003"]  # no half-written folder left
    assert not (tmp_path / "killed" / "adapter.safetensors").exists()
    assert finetune_here(base, data, tmp_path / "killed", "--resume")[0] == 0
    expected = read_adapter(tmp_path / "whole" / "adapter.safetensors").layers
    got = read_adapter(tmp_path / "killed" / "adapter.safetensors").layers
    assert expected.keys() == got.keys()
    for index in expected:
        for name in ("prompt", "gate"):
            assert torch.equal(expected[index][name], got[index][name]), (index, name)
    steps = [line for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == 20  # steps 4-5 of the killed run were dropped and redone, not duplicated


def test_script_errors_are_one_line(tiny_run, tmp_path, capsys):
    """Bad data and an incompatible resume print one 'error:' line and exit 2, leaving the run untouched."""
    base, data = tiny_run
    bad = write_records(tmp_path / "bad.json", records(3) + [{"instruction": "x", "input": "", "output": ""}])
    code, err = finetune_here(base, bad, tmp_path / "out", capsys=capsys)
    assert code == 2 and err.strip().count("\n") == 0
    assert "bad.json: record 3: field 'output' is empty" in err
    assert finetune_here(base, data, tmp_path / "run", "--epochs", "1")[0] == 0
    before = (tmp_path / "run" / "adapter.safetensors").read_bytes()
    capsys.readouterr()
    code, err = finetune_here(base, data, tmp_path / "run", "--epochs", "1", "--lr", "1e-3", "--resume", capsys=capsys)
    last_line = err.strip().splitlines()[-1]  # earlier lines: transformers' weight-loading bar
    assert code == 2 and last_line.startswith("error: ") and "lr: checkpoint 0.02, now 0.001" in last_line
    assert (tmp_path / "run" / "adapter.safetensors").read_bytes() == before
