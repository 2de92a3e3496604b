"""Adapter vs full fine-tuning, side by side in one run: step time, peak memory, optimizer state, checkpoint size.

Same base (SmolLM2-135M), same batches, one process, the variants taking turns on every batch (``bench/steps.py``):
``ours`` (the adapter, 10 x 30, the trainer's inner loop), ``peft`` (PEFT AdaptionPrompt, for reference) and
``full`` (every base parameter trainable, the same loss, AdamW; fp32 master weights under bf16 autocast, as full
fine-tuning runs in mixed precision). Batches: the trainer's first length-grouped micro-batches of real data
(``--shapes sqa alpaca``, from ../shared/data), or random tokens with a label everywhere (``random``) where that
data is absent. Per variant:

* step: median over ``--repeats`` passes (after a warm-up pass) of the time per batch;
* peak / added memory: peak RSS of a fresh process that runs only that variant, and that peak minus the RSS just
  before its steps (``--memory-of``, ``bench/common.py``); ``--no-memory`` skips it;
* optimizer: bytes of the optimizer's state after the timed steps (AdamW's two moments);
* export: the file a run ships (ours: ``save_adapter``; PEFT: ``save_pretrained``; full: the whole model in the
  run's dtype through ``save_pretrained``); resume: trainable parameters + optimizer state, ``torch.save``d.

The paper says the adapter converges ~3x faster than full fine-tuning (in wall time); this measures the cost of
one step, not convergence. Run: .venv/bin/python -m bench.full_ft --threads 1 [--shapes alpaca --dtypes bf16]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from bench.batches import ALPACA_FILE, SCIENCEQA_DIR, SHAPES, describe, load_batches
from bench.common import (
    add_common_args, common_child_argv, emit, header, interleaved_medians, memory_in_subprocess, set_threads,
)
from bench.steps import build_step, dtype_of, memory_child, optimizer_state_bytes
from mm_adapter import load_base, save_adapter

VARIANTS = ("ours", "peft", "full")
COLUMNS = ["shape", "dtype", "variant", "trainable", "step_s", "over_ours", "peak_rss_mb", "added_mb", "optimizer_mb",
           "export_mb", "resume_mb"]
DATA = {"sqa": SCIENCEQA_DIR / "problems.json", "alpaca": ALPACA_FILE}
MB = 2**20


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", choices=SHAPES, default=["alpaca"])
    parser.add_argument("--dtypes", nargs="+", choices=["bf16", "fp32"], default=["bf16"])
    parser.add_argument("--batch", type=int, default=4, help="examples per micro-batch (the paper's 4)")
    parser.add_argument("--batches", type=int, default=2, help="distinct batches per timed pass")
    parser.add_argument("--seq", type=int, default=128, help="sequence length of --shapes random")
    parser.add_argument("--adapter-len", type=int, default=10)
    parser.add_argument("--adapter-layers", type=int, default=30)
    parser.add_argument("--no-memory", dest="measure_memory", action="store_false",
                        help="skip the per-variant memory processes")
    add_common_args(parser, VARIANTS, repeats=3)
    return parser.parse_args(argv)


def usable_shape(shape: str) -> str:
    """``shape``, or ``random`` (said once) where its real data is not under ../shared/data."""
    if shape in DATA and not DATA[shape].is_file():
        print(f"{DATA[shape]} not found: synthetic batches (random tokens, a label everywhere) instead of {shape}")
        return "random"
    return shape


def child_argv(args: argparse.Namespace, shape: str, dtype: str) -> list[str]:
    return common_child_argv(args) + [
        "--shapes", shape, "--dtypes", dtype, "--batch", str(args.batch), "--batches", str(args.batches),
        "--seq", str(args.seq), "--adapter-len", str(args.adapter_len), "--adapter-layers", str(args.adapter_layers)]


def _file_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file())


def export_bytes(variant: str, model: torch.nn.Module, dtype: torch.dtype, folder: Path) -> int:
    """Bytes of what a run of ``variant`` ships (see the module docstring); ``full`` is cast to ``dtype`` first."""
    if variant == "ours":
        return _file_bytes(save_adapter(model, folder / "adapter.safetensors"))
    if variant == "full":
        model = model.to(dtype)
    model.save_pretrained(folder / variant)
    return _file_bytes(folder / variant)


def resume_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer, folder: Path) -> int:
    """Bytes of a checkpoint a run resumes from: the trainable parameters and the optimizer's state."""
    path = folder / "resume.pt"
    trainable = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    torch.save({"trainable": trainable, "optimizer": optimizer.state_dict()}, path)
    return path.stat().st_size


def measure_case(args: argparse.Namespace, base, batches: list, shape: str, dtype: str) -> list[dict]:
    """Every variant's row for one shape and dtype (timed interleaved; sizes measured after the timing)."""
    built = {v: build_step(v, base, dtype_of(dtype), args.adapter_len, args.adapter_layers) for v in VARIANTS}
    seconds = interleaved_medians({v: step for v, (_, step) in built.items()}, batches, args.repeats, clock=args.clock)
    rows = []
    for variant, (model, step) in built.items():
        memory = (memory_in_subprocess("bench.full_ft", child_argv(args, shape, dtype), variant)
                  if args.measure_memory else {})
        with tempfile.TemporaryDirectory() as scratch:
            sizes = {"optimizer_mb": optimizer_state_bytes(step.optimizer) / MB,
                     "resume_mb": resume_bytes(model, step.optimizer, Path(scratch)) / MB,
                     "export_mb": export_bytes(variant, model, dtype_of(dtype), Path(scratch)) / MB}
        rows.append({"shape": shape, "dtype": dtype, "variant": variant,
                     "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
                     "step_s": seconds[variant], "over_ours": seconds[variant] / seconds["ours"],
                     "peak_rss_mb": memory.get("peak_rss_mb", "-"), "added_mb": memory.get("case_over_start_mb", "-"),
                     **sizes, "threads": torch.get_num_threads(), "clock": args.clock})
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    set_threads(args.threads)
    base, tokenizer = load_base(args.base)
    if args.memory_of:  # child: one variant, one shape, one dtype, nothing else in this process
        memory_child(args, base, tokenizer)
        return []
    print(f"torch threads: {torch.get_num_threads()}; micro-batch {args.batch}; adapter {args.adapter_len} x "
          f"{args.adapter_layers}; {args.batches} batches x {args.repeats} passes")
    rows = []
    for shape in map(usable_shape, args.shapes):
        batches = load_batches(shape, tokenizer, base.config.vocab_size, args.batch, args.batches, args.seq)
        facts = describe(batches)
        print(f"{shape}: mean width {facts['width']:.1f}, labelled {facts['labelled']:.1f} per batch")
        header(COLUMNS)
        for dtype in args.dtypes:
            for row in measure_case(args, base, batches, shape, dtype):
                emit(row, COLUMNS)
                rows.append(row)
    return rows


if __name__ == "__main__":
    main()
