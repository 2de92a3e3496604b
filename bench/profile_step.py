"""torch.profiler table of one training step, to see where the time goes before optimising it.

Builds the same variants and batches as ``bench.step_vs_peft`` (ours, peft, frozen, frozen-routed),
runs ``--warmup`` untimed steps, then profiles one step per variant and prints the operators
sorted by self CPU time. The findings behind the attention changes are in docs/performance.md.
Run: .venv/bin/python -m bench.profile_step --threads 1 --shape sqa --dtype bf16 --variants ours peft
"""

from __future__ import annotations

import argparse

from torch.profiler import ProfilerActivity, profile

from bench.batches import SHAPES, load_batches
from bench.common import set_threads
from bench.steps import VARIANTS, build_step, dtype_of
from mm_adapter import load_base


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="smollm2-135m")
    parser.add_argument("--shape", choices=SHAPES, default="sqa")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=["ours", "peft"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--index", type=int, default=1, help="which of the trainer's first batches to profile")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 on a shared machine)")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    base, tokenizer = load_base(args.base)
    batch = load_batches(args.shape, tokenizer, base.config.vocab_size, args.batch, args.index + 1)[args.index]
    print(f"batch {tuple(batch['input_ids'].shape)}, {args.dtype}")
    for variant in args.variants:
        _, step = build_step(variant, base, dtype_of(args.dtype))
        for _ in range(args.warmup):
            step(batch)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step(batch)
        print(f"\n== {variant}")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
