"""The README's first command, end to end on a tiny model: data -> multimodal training -> table -> demo.

The main job (``mm_adapter.jobs.main_job.main_job``, the ``mm-adapter main`` command) runs its real pipeline
(generated image set, the ScienceQA training job, the eval job, the table, the demo predictor) with a tiny random
Llama and the tiny ViT instead of SmolLM2 and ViT-B-32, so the wiring of the default run is protected by CI without
the minutes of the real one.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from entry_point import MM_ADAPTER
from test_eval_run import make_tokenizer

from mm_adapter import read_adapter
from mm_adapter.cli import reports
from mm_adapter.encoders.clip import TINY_VIT
from mm_adapter.jobs.configs.main_job import MainConfig
from mm_adapter.jobs.main_job import main_job
from mm_adapter.model.config import ModelOptions
from tiny import tiny_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def base(tmp_path, monkeypatch):
    monkeypatch.setenv("MM_ADAPTER_CACHE", str(tmp_path / "cache"))
    tokenizer = make_tokenizer()
    model = tiny_model("llama-gqa", vocab_size=len(tokenizer), max_position_embeddings=1024,
                       bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    return tmp_path / "base"


def test_main_job_writes_table_and_answers_one_demo_question(base, tmp_path, capsys):
    """Without data or hub the job generates an image set in a fresh runs/main-* folder, trains a multimodal
    adapter (best.safetensors records QCM-T), evaluates it on test, writes the table (md, png, json) and the
    config.yaml, answers one test image question; the command's report prints the table, the demo and the time."""
    config = MainConfig(clip_model=TINY_VIT, clip_layers=2, hub=False, runs=str(tmp_path), n_train=24, n_val=8,
                        n_test=12, epochs=1, adapter_layers=2, model=ModelOptions(base=str(base), threads=1))
    threads = torch.get_num_threads()
    try:
        result = main_job(config)
    finally:
        torch.set_num_threads(threads)
    (run,) = tmp_path.glob("main-*")
    assert result.out == run and "generated image questions" in result.data
    assert (run / "table.md").read_text().count("|") > 20 and (run / "table.png").stat().st_size > 0
    assert (run / "table.json").is_file() and result.table is not None and len(result.table.scores) == 1
    assert read_adapter(run / "adapter" / "best.safetensors").extra_metadata["prompt_format"] == "QCM-T"
    assert result.eval.predictions == run / "test" / "predictions.json" and result.eval.summary.total == 12
    assert yaml.safe_load((run / "config.yaml").read_text())["command"] == "main"
    assert result.demo is not None and result.demo.image_used and result.demo_question.has_image
    assert result.demo.choices == tuple(result.demo_question.choices)
    capsys.readouterr()
    reports.main(result)
    out = capsys.readouterr().out
    assert out.startswith(result.eval.table) and f"table: {run / 'table.md'}" in out
    assert "[4/4] demo:" in out and "Answer: (" in out and "correct: (" in out and "done in" in out


def test_the_main_command_in_a_real_process(tmp_path):
    """``mm-adapter main`` (what the README's first command runs) in a real process: its flags
    are main's, and a bad value is one "error:" line naming the flag, exit 2, before any work."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([MM_ADAPTER, "main", "--n-train", "0", "--runs",
                           str(tmp_path)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert (done.returncode, done.stdout) == (2, "") and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: --n-train") and done.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []
    shown = subprocess.run([MM_ADAPTER, "main", "--help"], capture_output=True,
                           text=True, env=env, cwd=tmp_path, timeout=120)
    assert shown.returncode == 0 and "--clip-layers" in shown.stdout and "--no-hub" in shown.stdout
