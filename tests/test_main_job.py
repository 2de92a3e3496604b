"""The README's first command, end to end on a tiny model: data -> multimodal training -> table -> demo.

scripts/main.py runs its real pipeline (generated image set, fine-tuning script, eval script, table,
demo predictor) with a tiny random Llama and the tiny ViT instead of SmolLM2 and ViT-B-32, so the
wiring of the default run is protected by CI without the minutes of the real one.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from mm_adapter import read_adapter
from mm_adapter.visual import TINY_VIT
from scripts._cli import run as run_cli
from tests.test_eval_run import make_tokenizer
from tests.tiny import tiny_model

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
    spec = importlib.util.spec_from_file_location("main_job", REPO / "scripts" / "main.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    try:
        with pytest.raises(SystemExit) as exit:
            run_cli(module.main, ["--base", str(base), "--clip-model", TINY_VIT, "--clip-layers", "2", "--no-hub", "--runs", str(tmp_path),
                                  "--n-train", "24", "--n-val", "8", "--n-test", "12", "--epochs", "1",
                                  "--adapter-layers", "2", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    assert exit.value.code == 0
    out = capsys.readouterr().out
    (run,) = tmp_path.glob("main-*")
    assert (run / "table.md").read_text().count("|") > 20 and (run / "table.png").stat().st_size > 0
    assert read_adapter(run / "adapter" / "best.safetensors").extra_metadata["prompt_format"] == "QCM-T"
    assert "[4/4] demo:" in out and "answer: (" in out and "done in" in out
