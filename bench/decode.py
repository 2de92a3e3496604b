"""Greedy decoding speed: the bare base model vs our adapter vs PEFT's AdaptionPrompt (tokens/s).

Same prompt (the first Alpaca record in the paper's template), greedy, exactly ``--new-tokens`` new
tokens (EOS suppressed by ``min_new_tokens``), KV cache, batch 1; the three models take turns,
median of ``--repeats`` after a warm-up. All three start at zero gates, so they must emit the
same tokens (checked: ``same_tokens``); the adapters still do all their work (the gate is applied,
not skipped). ``--memory``: each variant's peak RSS in its own process (``bench/common.py``).
Run: .venv/bin/python -m bench.decode --threads 1 [--dtype bf16 --new-tokens 128 --memory]
"""

from __future__ import annotations

import argparse
import copy

import torch

from bench.batches import ALPACA_FILE
from bench.common import (
    add_common_args, common_child_argv, emit, header, interleaved_medians, memory_in_subprocess, report_memory,
    set_threads, verdict,
)
from bench.steps import dtype_of, peft_model
from mm_adapter import AdapterConfig, attach_adapter, load_base
from mm_adapter.data.alpaca import prompt_text, read_alpaca

VARIANTS = ("base", "ours", "peft")
COLUMNS = ["dtype", "prompt_tokens", "new_tokens", "base_tok_s", "ours_tok_s", "peft_tok_s", "ours_over_base",
           "peft_over_base", "same_tokens", "target"]
TARGET = 0.95


def prompt_ids(tokenizer) -> torch.Tensor:
    if ALPACA_FILE.is_file():
        record = read_alpaca(ALPACA_FILE, skip_bad=True).records[0]
        text = prompt_text(tokenizer, record.instruction, record.input)
    else:
        text = prompt_text(tokenizer, "Give three tips for staying healthy.")
    return tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]


def build(variant: str, base, dtype: torch.dtype, adapter_len: int, adapter_layers: int, copy_base: bool = True):
    model = (copy.deepcopy(base) if copy_base else base).to(dtype).eval()
    if variant == "ours":
        attach_adapter(model, AdapterConfig(adapter_len, adapter_layers))
    elif variant == "peft":
        model = peft_model(model, adapter_len, adapter_layers).eval()
    return model


def decoder(model, tokenizer, new_tokens: int):
    @torch.no_grad()
    def run(ids: torch.Tensor) -> torch.Tensor:
        return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                              max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                              pad_token_id=tokenizer.pad_token_id)
    return run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--adapter-len", type=int, default=10)
    parser.add_argument("--adapter-layers", type=int, default=30)
    add_common_args(parser, VARIANTS)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    base, tokenizer = load_base(args.base)
    ids, dtype = prompt_ids(tokenizer), dtype_of(args.dtype)
    if args.memory_of:
        run = decoder(build(args.memory_of, base, dtype, args.adapter_len, args.adapter_layers, copy_base=False),
                      tokenizer, args.new_tokens)
        report_memory(lambda: [run(ids) for _ in range(2)])
        return
    runs = {v: decoder(build(v, base, dtype, args.adapter_len, args.adapter_layers), tokenizer, args.new_tokens)
            for v in VARIANTS}
    outputs = {v: run(ids) for v, run in runs.items()}
    seconds = interleaved_medians(runs, [ids], args.repeats, clock=args.clock)
    tok_s = {v: args.new_tokens / s for v, s in seconds.items()}
    print(f"torch threads: {torch.get_num_threads()}; adapter {args.adapter_len} x {args.adapter_layers}")
    header(COLUMNS)
    emit({"dtype": args.dtype, "prompt_tokens": ids.shape[1], "new_tokens": args.new_tokens,
          "base_tok_s": tok_s["base"], "ours_tok_s": tok_s["ours"], "peft_tok_s": tok_s["peft"],
          "ours_over_base": tok_s["ours"] / tok_s["base"], "peft_over_base": tok_s["peft"] / tok_s["base"],
          "same_tokens": all(torch.equal(outputs["base"], o) for o in outputs.values()),
          "target": verdict(tok_s["ours"] / tok_s["base"], TARGET, at_most=False),
          "threads": torch.get_num_threads(), "clock": args.clock}, COLUMNS)
    if args.memory:
        argv_child = common_child_argv(args) + [
            "--dtype", args.dtype, "--new-tokens", str(args.new_tokens), "--adapter-len", str(args.adapter_len),
            "--adapter-layers", str(args.adapter_layers)]
        columns = ["dtype", "variant", "peak_rss_mb", "case_over_start_mb"]
        print()
        header(columns)
        for variant in VARIANTS:
            emit({"dtype": args.dtype, "variant": variant,
                  **memory_in_subprocess("bench.decode", argv_child, variant)}, columns)


if __name__ == "__main__":
    main()
