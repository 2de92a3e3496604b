"""Answer an Alpaca-style instruction with a base model and (optionally) one of several adapters, streamed.

    python scripts/generate.py --adapter runs/alpaca/adapter.safetensors --instruction "Name three colours."
    python scripts/generate.py --adapter a.safetensors b.safetensors --use b --instruction "..." --input "..."
    python scripts/generate.py --adapter a.safetensors b.safetensors      # interactive; ':use a' switches

All adapter files are read and checked against the base up front; switching between them copies
tensors into the loaded model (no base reload). Sampling defaults are the original's: temperature
0.1, top_p 0.75 (--temperature 0 for greedy).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cli import run  # noqa: E402

from mm_adapter import BaseIdentity, apply_adapter, load_base, read_adapter  # noqa: E402
from mm_adapter.alpaca import prompt_text  # noqa: E402
from mm_adapter.errors import MMAdapterError  # noqa: E402
from mm_adapter.generate import SamplingConfig, generate_text  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="smollm2-135m", help="base model spec (see mm_adapter.load_base)")
    parser.add_argument("--adapter", nargs="+", default=[], help="one or more adapter files")
    parser.add_argument("--use", help="which adapter to apply (file name without .safetensors)")
    parser.add_argument("--instruction", help="omit for an interactive session (one instruction per line)")
    parser.add_argument("--input", default="", help="optional input/context for the instruction")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=SamplingConfig.temperature)
    parser.add_argument("--top-p", type=float, default=SamplingConfig.top_p)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default=None)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def choose(adapters: dict, name: str | None) -> str | None:
    """The adapter to apply: ``--use`` if given, the only one if one, else an error listing the names."""
    if name is None:
        if len(adapters) > 1:
            raise MMAdapterError(f"{len(adapters)} adapters given; choose one with --use ({', '.join(adapters)})")
        return next(iter(adapters), None)
    if name not in adapters:
        known = ", ".join(adapters) or "none given"
        raise MMAdapterError(f"--use {name}: no such adapter (known: {known})")
    return name


def read_all(paths: list[str], model) -> dict:
    """Read every adapter and refuse any made for another base, before generating anything."""
    identity, adapters = BaseIdentity.of(model), {}
    for path in paths:
        adapter = read_adapter(path)
        if adapter.name in adapters:
            raise MMAdapterError(f"{path}: two adapters are named {adapter.name!r}; rename one")
        if adapter.base.mismatch(identity):
            raise MMAdapterError(f"{path}: made for {adapter.base.describe()}, but this base is {identity.describe()}")
        adapters[adapter.name] = adapter
    return adapters


def answer(model, tokenizer, instruction: str, input: str, sampling: SamplingConfig) -> str:
    return generate_text(model, tokenizer, prompt_text(tokenizer, instruction, input), sampling, stream=True,
                         add_special_tokens=False)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    model, tokenizer = load_base(args.base, dtype=args.dtype)
    adapters = read_all(args.adapter, model)
    current = choose(adapters, args.use)
    if current is not None:
        apply_adapter(model, adapters[current])
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p)
    if args.instruction is not None:
        answer(model, tokenizer, args.instruction, args.input, sampling)
        return 0
    print(f"adapter: {current or 'none'}. One instruction per line; ':use NAME' switches adapter; Ctrl-D quits.",
          file=sys.stderr)
    for line in sys.stdin:
        line = line.strip()
        if line.startswith(":use "):
            try:
                current = choose(adapters, line[5:].strip())
            except MMAdapterError as error:
                print(f"error: {error}", file=sys.stderr)
                continue
            apply_adapter(model, adapters[current])
            print(f"adapter: {current}", file=sys.stderr)
        elif line:
            answer(model, tokenizer, line, "", sampling)
    return 0


if __name__ == "__main__":
    run(main)
