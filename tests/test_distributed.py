"""torchrun + DDP (gloo on CPU) through `python -m mm_adapter train alpaca`: two processes give the single-process
result of the job function for the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from tiny_text import REPO, arguments, finetune_here, records, tiny_base_folder, write_records

from mm_adapter import read_adapter

# fp32 on CPU; the only difference is where two micro-batch gradients are summed (all-reduce vs accumulation).
# Observed here: bit-identical (max difference 0.0); the tolerance leaves room for other reduction orders.
TOLERANCE = dict(rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_two_gloo_ranks_match_one_process_with_accumulation(tmp_path):
    """2 ranks x micro-batch 2 == 1 process x micro-batch 2 x 2 accumulation steps; only rank 0 writes files."""
    base, data = tiny_base_folder(tmp_path / "base"), write_records(tmp_path / "data.json", records(40))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "mm_adapter", "train", "alpaca",
               *arguments(base, data, tmp_path / "ddp", "--batch-size", "2", "--accum-steps", "1")]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=REPO, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "world size 2" in ddp.stdout and ddp.stdout.count("done:") == 1  # rank 1 prints nothing
    assert finetune_here(base, data, tmp_path / "single", batch_size=2, accum_steps=2).steps == 20

    expected = read_adapter(tmp_path / "single" / "adapter.safetensors").layers
    got = read_adapter(tmp_path / "ddp" / "adapter.safetensors").layers
    for index in expected:
        for name in ("prompt", "gate"):
            torch.testing.assert_close(got[index][name], expected[index][name], **TOLERANCE)
    assert not torch.equal(expected[min(expected)]["gate"], torch.zeros_like(expected[min(expected)]["gate"]))
    files = sorted(p.relative_to(tmp_path / "ddp").as_posix() for p in (tmp_path / "ddp").rglob("*") if p.is_file())
    assert files == ["adapter.safetensors", "checkpoints/step-00000018/state.json",
                     "checkpoints/step-00000018/tensors.safetensors", "checkpoints/step-00000020/state.json",
                     "checkpoints/step-00000020/tensors.safetensors", "config.yaml", "loss.png", "metrics.jsonl"]
    assert len((tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()) == 20
