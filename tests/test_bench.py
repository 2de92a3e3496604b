"""The benchmark suite's own plumbing, on toys: the GPU script's CPU smoke path, its 7B shapes on the
meta device, batch building and the interleaved timer. Fast; no real model or GPU needed."""

import json

import torch
from transformers import LlamaForCausalLM

from bench import gpu_7b
from bench.batches import describe, random_examples, trainer_batches
from bench.common import interleaved_medians, verdict
from mm_adapter import AdapterConfig, attach_adapter, count_trainable


def test_gpu_script_runs_its_tiny_cpu_path_and_reports_every_variant(capsys):
    torch.set_num_threads(1)
    assert gpu_7b.main(["--tiny", "--batch", "2", "--seq", "16", "--warmup", "1", "--repeats", "1"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    rows = {row["variant"]: row for row in lines if "variant" in row}
    assert set(rows) == {"ours", "frozen", "peft"}
    assert rows["ours"]["trainable"] == 4 * (10 * 64 + 4) and rows["frozen"]["trainable"] == 0
    assert rows["peft"]["trainable"] > 0 and all(row["tokens_per_s"] > 0 for row in rows.values())
    assert "ours_over_peft" in lines[-1]


def test_gpu_script_builds_llama_7b_on_the_meta_device_with_the_papers_adapter_size():
    config = gpu_7b.model_config(tiny=False)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    assert 6.7e9 < sum(p.numel() for p in model.parameters()) < 6.8e9
    attach_adapter(model, AdapterConfig(adapter_len=10, adapter_layers=30))
    assert count_trainable(model) == 1_229_760  # LLaMA-Adapter's published 1.2M
    flops = gpu_7b.step_flops(config, batch=4, seq=512, labelled=1024)
    assert 50e12 < flops < 60e12  # ~4 x 6.5e9 body parameters x 2048 tokens, plus attention and the head


def test_gpu_script_without_cuda_says_so_in_one_line(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_7b.main([]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_trainer_batches_are_length_grouped_and_described():
    examples = random_examples(vocab_size=50, count=12, seq=9)
    examples = [{"input_ids": e["input_ids"][: 3 + i % 7], "labels": e["labels"][: 3 + i % 7]}
                for i, e in enumerate(examples)]
    batches = trainer_batches(examples, pad_id=0, batch_size=4, count=2)
    assert len(batches) == 2 and all(b["input_ids"].shape[0] == 4 for b in batches)
    facts = describe(batches)
    assert facts["labelled"] <= facts["real_tokens"] <= facts["width"] * 4


def test_interleaved_medians_and_verdicts():
    calls = []
    medians = interleaved_medians({"a": calls.append, "b": calls.append}, [1, 2], repeats=3, warmup=1)
    assert calls == [1, 1, 2, 2] * 4 and set(medians) == {"a", "b"}
    assert verdict(0.4, 0.5).startswith("met") and verdict(0.6, 0.5).startswith("MISSED")
    assert verdict(21, 20, at_most=False).startswith("met")
