"""The benchmark suite's own plumbing, on toys: the GPU scripts' CPU smoke paths, their 7B shapes on the
meta device, the full fine-tuning comparison, batch building and the interleaved timer. Fast; no real model or
GPU needed."""

import json

import pytest
import torch
from transformers import LlamaForCausalLM

from bench import eval_speed, full_ft, gpu_7b, gpu_suite
from bench.batches import describe, random_examples, trainer_batches
from bench.common import interleaved_medians, verdict
from mm_adapter import AdapterConfig, attach_adapter, count_trainable
from mm_adapter.scienceqa.data import read_official
from mm_adapter.scienceqa.prompts import build_prompt
from test_eval_run import make_tokenizer
from test_eval_run_script import official_layout
from tiny import tiny_model
from tiny_text import tiny_base_folder


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


def _rows(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_gpu_suite_runs_every_section_on_its_tiny_cpu_path(capsys):
    """One command: trainer rows (fsdp one line where the trainer lacks it), ours/frozen/PEFT steps, full
    fine-tuning vs ours on a slice, decoding with and without adapters; each row with a positive rate."""
    torch.set_num_threads(1)
    argv = ["--tiny", "--batch", "2", "--seq", "16", "--warmup", "1", "--repeats", "1", "--train-steps", "3",
            "--full-layers", "2", "--prompt", "8", "--new-tokens", "4"]
    assert gpu_suite.main(argv) == 0
    out = capsys.readouterr().out
    rows = _rows(out)
    trainer = {row["strategy"]: row for row in rows if "strategy" in row}
    assert "ddp" in trainer and ("fsdp" in trainer or "trainer fsdp: skipped: " in out)
    steps = [row for row in rows if "step_s" in row and "variant" in row]
    assert {(row["variant"], row["layers"]) for row in steps} == {("ours", 4), ("frozen", 4), ("peft", 4),
                                                                   ("full", 2), ("ours", 2)}
    full = next(row for row in steps if row["variant"] == "full")
    assert full["trainable"] == sum(p.numel() for p in LlamaForCausalLM(gpu_7b.model_config(True, 2)).parameters())
    decode = {row["variant"]: row for row in rows if "over_base" in row}
    assert set(decode) == {"base", "ours", "peft"} and all(row["tokens_per_s"] > 0 for row in decode.values())
    assert "full_over_ours" in rows[-1]


def test_full_fine_tuning_flops_count_weight_gradients():
    """Full fine-tuning's backward also computes weight gradients: 6 instead of 4 FLOPs per parameter and token."""
    config = gpu_7b.model_config(tiny=False, layers=8)
    frozen = gpu_7b.step_flops(config, 4, 512, 0)
    full = gpu_7b.step_flops(config, 4, 512, 0, weight_grads=True)
    attention = 12.0 * 8 * 4096 * 512 * 4 * 512
    assert (full - attention) / (frozen - attention) == 1.5


def test_adapter_vs_full_fine_tuning_reports_time_memory_optimizer_and_checkpoints(tmp_path, capsys):
    """bench.full_ft on a tiny base and synthetic batches: full trains every parameter and its optimizer holds two
    fp32 moments each (8 bytes); the adapter's optimizer state, export and resume checkpoint are far smaller."""
    torch.set_num_threads(1)
    base = tiny_base_folder(tmp_path / "base")
    rows = {row["variant"]: row for row in full_ft.main(
        ["--base", str(base), "--shapes", "random", "--seq", "12", "--batches", "1", "--repeats", "1",
         "--adapter-len", "4", "--adapter-layers", "3", "--no-memory", "--threads", "1"])}
    assert set(rows) == {"ours", "peft", "full"} and rows["ours"]["over_ours"] == 1.0
    params = sum(p.numel() for p in LlamaForCausalLM.from_pretrained(base).parameters())
    assert rows["full"]["trainable"] == params
    assert rows["full"]["optimizer_mb"] * 2**20 == 8 * params
    assert rows["ours"]["optimizer_mb"] * 2**20 == 8 * rows["ours"]["trainable"]
    for size in ("optimizer_mb", "export_mb", "resume_mb"):
        assert rows["ours"][size] < rows["full"][size] / 5
    assert "| random | bf16 | full |" in capsys.readouterr().out


@pytest.mark.parametrize("fmt", ["QCM-T", "QCM-A"])
def test_eval_speed_counts_the_model_work_and_sets_it_against_the_floor(tmp_path, capsys, fmt):
    """bench.eval_speed on a tiny base and the tiny problems: the tokens it counts are those score mode reads (the
    prompt once, then each option's own tokens; the letter prefix for QCM-A), the linear FLOPs are 2 x the decoder's
    linear weights per token, the ratio is eval time over floor time, and a run compared with itself differs nowhere."""
    tokenizer = make_tokenizer()
    base = tmp_path / "base"
    model = tiny_model("llama-gqa", vocab_size=len(tokenizer), bos_token_id=1, eos_token_id=2)
    model.save_pretrained(base)
    tokenizer.save_pretrained(base)
    data = official_layout(tmp_path / "sqa")
    answers = tmp_path / "answers.json"
    common = ["--data", str(data), "--split", "val", "--base", str(base), "--threads", "1", "--format", fmt,
              "--no-bf16", "--adapter-len", "3", "--adapter-layers", "2"]
    eval_speed.main(common + ["--save", str(answers)])
    row = eval_speed.main(common + ["--compare", str(answers)])
    problems = read_official(data, "val")[0]
    prompts = [build_prompt(p, fmt, True).prompt for p in problems]
    if fmt == "QCM-A":
        expected = sum(len(ids) for ids in tokenizer([p + " The answer is" for p in prompts]).input_ids)
    else:
        expected = 0
        for prompt, problem in zip(prompts, problems):  # shared: common to all options, up to the answer prefix
            full = [tokenizer(f"{prompt} The answer is {c}.").input_ids for c in problem.choices]
            shared = len(tokenizer(prompt + " The answer is").input_ids)
            while shared > 1 and len({tuple(f[:shared]) for f in full}) > 1:
                shared -= 1
            expected += shared + sum(len(f) - shared for f in full)
    assert row["tokens"] == expected
    linear = sum(m.weight.numel() for m in model.model.modules() if isinstance(m, torch.nn.Linear))
    assert row["linear_flops"] == 2 * linear * expected
    assert row["eval_over_floor"] == pytest.approx(row["eval_s"] / row["floor_s"])
    assert row["changed"] == 0 and "answers differing from" in capsys.readouterr().out
