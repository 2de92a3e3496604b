"""The GPU numbers of a 7B-shaped LLaMA in one command: training throughput and MFU of our adapter vs PEFT vs full
fine-tuning, the trainer under DDP vs FSDP on the GPUs present, and decoding tokens/s with and without the adapter.

No weights are downloaded: the LLaMA-7B architecture is materialised on the GPU in bf16 with random weights
(``bench/gpu_7b.py``: same FLOPs as real ones; MFU's accounting is in its docstring). Sections, in this order:

1. trainer: ``mm_adapter.training.trainer.train`` itself (adapter 10 x 30, batch ``--batch`` x ``--seq`` per GPU, synthetic
   examples) for ``--train-steps`` optimizer steps under each ``strategy`` of the trainer (ddp, fsdp). With several
   GPUs: torchrun over all of them, each process loading the base through the trainer's own loader from a random
   7B folder written once (fsdp reads a part per process from safetensors); with one GPU: in this process, and
   the fsdp row is one line saying why it is skipped (it splits the base over at least 2 processes), as it is
   where this checkout's trainer lacks the strategy. tokens/s: the median of the trainer's per-step figure
   (metrics.jsonl) after the first 2 steps.
2. step (32 layers): one training step of ours, the frozen base and PEFT AdaptionPrompt on the full 7B shape,
   median of ``--repeats`` CUDA-synchronised steps after ``--warmup`` (as ``bench.gpu_7b``).
3. decode: greedy tokens/s, batch 1, a ``--prompt`` token prompt and exactly ``--new-tokens`` new tokens, KV cache:
   the bare base, with our adapter, with PEFT's.
4. full fine-tuning: 7B-shaped layers but only ``--full-layers`` of them (default 8: 1.9B parameters, about 30 GB of
   fp32 weights, gradients and AdamW moments, which one 80 GB GPU holds; all 32 would need ~108 GB before
   activations): full fine-tuning (fp32 master weights, bf16 autocast) vs our adapter on the same slice.

Sized to finish in under 8 minutes on one H100/H200 (on several GPUs the trainer rows add a 13.5 GB folder write and
a torchrun launch per strategy). ``--tiny``: a 4-layer toy on CPU through the same code, the trainer in this process
(the test suite runs it). Run: .venv/bin/python -m bench.gpu_suite [--gpus 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.common import emit, header
from bench.gpu_7b import (
    add_shape_args, make_batch, materialise, model_config, peak_tflops, run_variants, step_flops, time_step,
)
from mm_adapter import AdapterConfig, attach_adapter, detach_adapter
from mm_adapter.errors import ConfigError, MMAdapterError
from mm_adapter.training.batches import IGNORE_INDEX, PadCollator
from mm_adapter.training.config import TrainConfig
from mm_adapter.training.trainer import train

STRATEGIES = ("ddp", "fsdp")
ROW = "ROW "  # prefix of a trainer child's result line
SKIPPED_STEPS = 2  # the trainer's first steps: allocation, kernel autotuning
STEP_COLUMNS = ["variant", "layers", "step_s", "tokens_per_s", "model_tflops", "mfu", "peak_mem_gb", "trainable"]
TRAINER_COLUMNS = ["strategy", "gpus", "step_s", "tokens_per_s", "mfu", "peak_mem_gb"]
DECODE_COLUMNS = ["variant", "prompt_tokens", "new_tokens", "tokens_per_s", "over_base"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shape_args(parser)
    parser.add_argument("--gpus", type=int, help="processes of the trainer rows (default: every GPU present; with "
                        "--tiny, CPU processes over gloo)")
    parser.add_argument("--train-steps", type=int, default=8, help="optimizer steps per trainer row")
    parser.add_argument("--full-layers", type=int, default=8, help="layers of the 7B-shaped full fine-tuning slice")
    parser.add_argument("--prompt", type=int, default=128, help="prompt tokens of the decoding rows")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--trainer-child", choices=STRATEGIES, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    parser.add_argument("--child-base", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# --- 1. the trainer under each strategy -------------------------------------------------------------------------

def strategy_unavailable(strategy: str, world: int) -> str | None:
    """Why the trainer cannot run ``strategy`` on ``world`` processes in this checkout, or None."""
    if "strategy" not in {f.name for f in dataclasses.fields(TrainConfig)}:
        return None if strategy == "ddp" else ("TrainConfig has no `strategy` setting in this checkout: the "
                                               "trainer's FSDP strategy is not in place")
    try:
        TrainConfig(strategy=strategy)
    except ConfigError as error:
        return str(error)
    if strategy == "fsdp" and world < 2:
        return f"fsdp splits the base over at least 2 processes (GPUs); this run has {world}"
    return None


def synthetic_examples(vocab_size: int, count: int, seq: int, label_fraction: float) -> list[dict]:
    """``count`` examples of ``seq`` random tokens, labels on the last ``label_fraction`` (as ``make_batch``)."""
    generator = torch.Generator().manual_seed(2)
    rows = torch.randint(0, vocab_size, (count, seq), generator=generator).tolist()
    prompt = seq - max(1, int(seq * label_fraction))
    return [{"input_ids": row, "labels": [IGNORE_INDEX] * prompt + row[prompt:]} for row in rows]


def trainer_config(strategy: str, args: argparse.Namespace) -> TrainConfig:
    settings = {"strategy": strategy} if "strategy" in {f.name for f in dataclasses.fields(TrainConfig)} else {}
    return TrainConfig(epochs=1, batch_size=args.batch, lr=1e-3, warmup_epochs=0.0, checkpoint_every=10**6,
                       keep_checkpoints=1, progress=False, **settings)


def write_base_folder(args: argparse.Namespace, folder: Path, device: torch.device) -> Path:
    """The 7B shape (or the toy) with random weights as a transformers folder (safetensors and a stand-in
    tokenizer): what the trainer's fsdp loads a part of per process (``base_loading.load_training_base``)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    model = materialise(model_config(args.tiny), device)
    model.save_pretrained(folder)
    del model
    _free(device)
    vocab = {"<pad>": 0, "<unk>": 1, "<s>": 2, "</s>": 3}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
                                        pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    tokenizer.save_pretrained(folder)
    return folder


def _trainer_model(strategy: str, args: argparse.Namespace, config, device: str, base: Path | None):
    """The base for a trainer row: loaded through the trainer's own loader from ``base`` (hollow under fsdp), or,
    with no folder (one process), materialised in place; with the adapter attached."""
    if base is None:
        model = materialise(config, torch.device(device))
    else:
        from mm_adapter.training.base_loading import load_training_base

        model, _ = load_training_base(str(base), "bf16", trainer_config(strategy, args), device)
    torch.manual_seed(0)  # the same adapter on every rank
    attach_adapter(model, AdapterConfig(args.adapter_len, min(args.adapter_layers, config.num_hidden_layers)))
    return model


def trainer_row(strategy: str, args: argparse.Namespace, out: Path, device: str | None,
                base: Path | None = None) -> dict:
    """Train the 7B shape (or the toy) for ``--train-steps`` steps under ``strategy``; this rank's row."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device is None:  # under torchrun: this rank's GPU
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    config = model_config(args.tiny)
    model = _trainer_model(strategy, args, config, device, base)
    examples = synthetic_examples(config.vocab_size, args.train_steps * args.batch * world, args.seq,
                                  args.label_fraction)
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    train(model, examples, trainer_config(strategy, args), PadCollator(0), out, device=device, export=None)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    tokens_per_s = statistics.median(r["tokens_per_s"] for r in records[SKIPPED_STEPS:] or records)
    step_s = args.batch * args.seq * world / tokens_per_s
    flops = step_flops(config, args.batch, args.seq, args.batch * max(1, int(args.seq * args.label_fraction)))
    peak = peak_tflops(torch.device(device), args.peak_tflops)
    memory = torch.cuda.max_memory_allocated() / 2**30 if torch.device(device).type == "cuda" else "-"
    return {"strategy": strategy, "gpus": world, "step_s": step_s, "tokens_per_s": tokens_per_s,
            "mfu": flops / step_s / 1e12 / peak if peak else "-", "peak_mem_gb": memory}


def _child_argv(args: argparse.Namespace, strategy: str, out: Path, base: Path) -> list[str]:
    """This script's flags for a torchrun child that runs one strategy's trainer row."""
    argv = ["--batch", str(args.batch), "--seq", str(args.seq), "--label-fraction", str(args.label_fraction),
            "--adapter-len", str(args.adapter_len), "--adapter-layers", str(args.adapter_layers),
            "--train-steps", str(args.train_steps), "--trainer-child", strategy, "--child-out", str(out),
            "--child-base", str(base)]
    return argv + (["--tiny"] if args.tiny else []) + (["--peak-tflops", str(args.peak_tflops)]
                                                       if args.peak_tflops else [])


def launched_row(strategy: str, args: argparse.Namespace, world: int, out: Path, base: Path) -> dict:
    """One strategy's row from ``torchrun --nproc_per_node world`` (rank 0 prints it); one line if it fails."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
               "-m", "bench.gpu_suite", *_child_argv(args, strategy, out, base)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        if line.startswith(ROW):
            return json.loads(line.removeprefix(ROW))
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    raise MMAdapterError(f"{strategy} trainer run failed (exit {done.returncode}): {tail}")


def trainer_rows(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Section 1: one row per strategy the trainer runs here; a strategy it cannot is one line saying why. Several
    processes (torchrun) load the base from a folder written once, as fsdp needs; one process trains in place."""
    world = args.gpus or (torch.cuda.device_count() if device.type == "cuda" else 1)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        base = write_base_folder(args, Path(scratch) / "base", device) if world > 1 else None
        for strategy in STRATEGIES:
            reason = strategy_unavailable(strategy, world)
            if reason:
                print(f"trainer {strategy}: skipped: {reason}", flush=True)
                continue
            out = Path(scratch) / strategy
            try:
                rows.append(launched_row(strategy, args, world, out, base) if base
                            else trainer_row(strategy, args, out, str(device)))
            except MMAdapterError as error:  # the trainer refused this strategy here
                print(f"trainer {strategy}: skipped: {error}", flush=True)
    return rows


# --- 2-4. steps and decoding on one materialised model ----------------------------------------------------------

def decode_rate(model, ids: torch.Tensor, new_tokens: int, device: torch.device, repeats: int) -> float:
    """Greedy tokens/s: exactly ``new_tokens`` new tokens after ``ids``, KV cache, median of ``repeats``."""
    @torch.no_grad()
    def run(prompt: torch.Tensor) -> torch.Tensor:
        return model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                              max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)

    seconds, _ = time_step(run, ids, device, warmup=1, repeats=repeats)
    return new_tokens / seconds


def seven_b_rows(args: argparse.Namespace, device: torch.device, peak: float | None) -> tuple[dict, dict]:
    """Sections 2 and 3 on one 32-layer model: step rows (ours, frozen, PEFT) and decode rows (base, ours, PEFT)."""
    config = model_config(args.tiny)
    layers = min(args.adapter_layers, config.num_hidden_layers)
    model = materialise(config, device)
    batch = make_batch(config, args.batch, args.seq, args.label_fraction, device)
    ids = make_batch(config, 1, args.prompt, 1.0, device)["input_ids"]
    repeats = max(1, args.repeats // 3)
    model.eval()
    decode = {"base": decode_rate(model, ids, args.new_tokens, device, repeats)}
    attach_adapter(model, AdapterConfig(args.adapter_len, layers))
    decode["ours"] = decode_rate(model.eval(), ids, args.new_tokens, device, repeats)
    detach_adapter(model)
    model, steps = run_variants(model, ("ours", "frozen", "peft"), config, batch, args, device, peak, layers)
    decode["peft"] = decode_rate(model.eval(), ids, args.new_tokens, device, repeats)  # PEFT-wrapped by now
    del model
    return steps, decode


def full_rows(args: argparse.Namespace, device: torch.device, peak: float | None) -> dict:
    """Section 4: full fine-tuning vs our adapter on a ``--full-layers`` slice of the 7B shape."""
    config = model_config(args.tiny, args.full_layers)
    model = materialise(config, device)
    batch = make_batch(config, args.batch, args.seq, args.label_fraction, device)
    layers = min(args.adapter_layers, config.num_hidden_layers)
    _, rows = run_variants(model, ("full", "ours"), config, batch, args, device, peak, layers)
    return rows


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def report(trainer: list[dict], steps: dict, full: dict, decode: dict, args: argparse.Namespace) -> None:
    print("\ntrainer (mm_adapter.training.trainer.train, adapter, synthetic examples):")
    header(TRAINER_COLUMNS)
    for row in trainer:
        emit(row, TRAINER_COLUMNS)
    print(f"\ntraining step (all {steps['ours']['layers']} layers):")
    header(STEP_COLUMNS)
    for row in steps.values():
        emit(row, STEP_COLUMNS)
    print(f"\nfull fine-tuning vs ours ({full['full']['layers']}-layer slice of the 7B shape):")
    header(STEP_COLUMNS)
    for row in full.values():
        emit(row, STEP_COLUMNS)
    print(f"\ndecoding (batch 1, {args.prompt}-token prompt, greedy):")
    header(DECODE_COLUMNS)
    for variant, rate in decode.items():
        emit({"variant": variant, "prompt_tokens": args.prompt, "new_tokens": args.new_tokens, "tokens_per_s": rate,
              "over_base": rate / decode["base"]}, DECODE_COLUMNS)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.trainer_child:  # a torchrun rank: one strategy's trainer row, printed by rank 0
        row = trainer_row(args.trainer_child, args, Path(args.child_out), "cpu" if args.tiny else None,
                          Path(args.child_base))
        if int(os.environ.get("RANK", "0")) == 0:
            print(ROW + json.dumps(row), flush=True)
        return 0
    if not args.tiny and not torch.cuda.is_available():
        print("no CUDA device; this benchmark needs a GPU (use --tiny for the CPU smoke path)", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.tiny else "cuda")
    peak = peak_tflops(device, args.peak_tflops)
    started = time.perf_counter()
    print(json.dumps({"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                      "gpus": torch.cuda.device_count() if device.type == "cuda" else 0, "batch": args.batch,
                      "seq": args.seq, "peak_tflops": peak}), flush=True)
    trainer = trainer_rows(args, device)  # first: its processes need the GPUs' memory
    _free(device)
    steps, decode = seven_b_rows(args, device, peak)
    _free(device)
    full = full_rows(args, device, peak)
    report(trainer, steps, full, decode, args)
    print(json.dumps({"ours_over_peft": steps["ours"]["step_s"] / steps["peft"]["step_s"],
                      "full_over_ours": full["full"]["step_s"] / full["ours"]["step_s"],
                      "total_s": round(time.perf_counter() - started, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
