"""One training step (forward, backward, AdamW) of our adapter vs PEFT's AdaptionPrompt on SmolLM2-135M.

Same base, same batch (4 x 256 random tokens, full-sequence LM loss), same adapter_len/layers,
timed in one process: fp32 base, and bf16 base weights (PEFT crashes under bf16 autocast with fp32
adapter weights, so both run on a bf16 base without autocast for a like-for-like comparison).
Run: .venv/bin/python -m bench.step_vs_peft [--batch 4 --seq 256 --repeats 5]
"""

from __future__ import annotations

import argparse
import copy

import torch

from bench.common import emit, median_seconds
from mm_adapter import AdapterConfig, attach_adapter, count_trainable, load_base

COLUMNS = ["dtype", "ours_s", "peft_s", "ratio_ours_over_peft", "ours_trainable", "peft_trainable"]


def make_step(model, batch):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.02)

    def step():
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def peft_model(base, adapter_len, adapter_layers):
    from peft import AdaptionPromptConfig, get_peft_model

    config = AdaptionPromptConfig(adapter_len=adapter_len, adapter_layers=adapter_layers, task_type="CAUSAL_LM")
    return get_peft_model(base, config)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="smollm2-135m")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--adapter-len", type=int, default=10)
    parser.add_argument("--adapter-layers", type=int, default=30)
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 on a shared machine)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base, _ = load_base(args.base)
    ids = torch.randint(0, base.config.vocab_size, (args.batch, args.seq))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    print(f"torch threads: {torch.get_num_threads()}; batch {args.batch} x {args.seq}; "
          f"adapter {args.adapter_len} x {args.adapter_layers}")
    print("| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS))
    for dtype_name in args.dtypes:
        dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
        ours = attach_adapter(copy.deepcopy(base).to(dtype), AdapterConfig(args.adapter_len, args.adapter_layers))
        ours.train()
        theirs = peft_model(copy.deepcopy(base).to(dtype), args.adapter_len, args.adapter_layers)
        theirs.train()
        ours_s = median_seconds(make_step(ours, batch), args.repeats)
        peft_s = median_seconds(make_step(theirs, batch), args.repeats)
        emit({"dtype": dtype_name, "ours_s": ours_s, "peft_s": peft_s, "ratio_ours_over_peft": ours_s / peft_s,
              "ours_trainable": count_trainable(ours),
              "peft_trainable": sum(p.numel() for p in theirs.parameters() if p.requires_grad)}, COLUMNS)
        del ours, theirs


if __name__ == "__main__":
    main()
