"""Alpaca figures on real data with SmolLM2-135M (prints numbers; not a test).

    python -m bench.alpaca                      # ../shared/data/alpaca/alpaca_5000.json
    python -m bench.alpaca --train-records 4800 # the full "one epoch on the rest"

(a) token slots computed per epoch: our length-grouped dynamic padding vs padding every sample to 512
    (the original's batching); target <= 0.35x.
(b) loss per response token on the last 200 records before and after one epoch on the first
    --train-records of the rest, through the real trainer.
(c) training step time (forward, backward, AdamW) vs PEFT AdaptionPrompt (adapter_len 10, adapter_layers 30)
    on the same real batches, bf16 autocast, same base weights dtype; median of --reps after warm-up,
    the two interleaved so background load hits both alike. Target: ours >= 1.3x faster.
Prints one JSON line per figure and a Markdown table at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from mm_adapter import AdapterConfig, attach_adapter, load_base
from mm_adapter.data.alpaca import encode_alpaca, read_alpaca
from mm_adapter.training.batches import PadCollator, epoch_batches, padded_tokens
from mm_adapter.training.config import TrainConfig
from mm_adapter.training.trainer import build_optimizer, evaluate_loss, lm_loss_sum, train

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca" / "alpaca_5000.json"
ROWS: list[tuple[str, str, str]] = []


def emit(record: dict, row: tuple[str, str, str]) -> None:
    print(json.dumps(record), flush=True)
    ROWS.append(row)


def bench_padding(examples, batch_size: int, max_seq_len: int, seed: int) -> None:
    lengths = [len(e["input_ids"]) for e in examples]
    ours = padded_tokens(lengths, epoch_batches(lengths, batch_size, seed, epoch=0))
    fixed = len(examples) * max_seq_len
    emit({"figure": "a_tokens_per_epoch", "records": len(examples), "real_tokens": sum(lengths),
          "ours_padded": ours, "fixed_512": fixed, "ratio": round(ours / fixed, 4), "target_max": 0.35},
         ("(a) token slots per epoch, ours / fixed 512", f"{ours:,} / {fixed:,} = {ours / fixed:.3f}x",
          "<= 0.35x " + ("met" if ours / fixed <= 0.35 else "MISSED")))


def bench_loss(args, tokenizer, train_examples, held_out) -> None:
    collate = PadCollator(tokenizer.pad_token_id)
    model, _ = load_base(args.base, dtype=args.dtype)
    torch.manual_seed(args.seed)
    attach_adapter(model, AdapterConfig(adapter_len=10, adapter_layers=30))
    before = evaluate_loss(model, held_out, collate, batch_size=8)
    with tempfile.TemporaryDirectory(prefix="bench-alpaca-") as out:
        config = TrainConfig(epochs=1, warmup_epochs=args.warmup_epochs, batch_size=args.batch_size,
                             lr=args.lr, seed=args.seed, checkpoint_every=10**9, progress=not args.no_progress)
        start = time.perf_counter()
        result = train(model, train_examples, config, collate, out, export=None)
        seconds = time.perf_counter() - start
    after = evaluate_loss(model, held_out, collate, batch_size=8)
    emit({"figure": "b_heldout_loss", "train_records": len(train_examples), "heldout_records": len(held_out),
          "steps": result.steps, "lr": args.lr, "train_seconds": round(seconds, 1), "before": round(before, 4),
          "after": round(after, 4), "drop": round(before - after, 4)},
         (f"(b) loss on last {len(held_out)}, before -> after 1 epoch on {len(train_examples)}",
          f"{before:.3f} -> {after:.3f} ({result.steps} steps, {seconds / 60:.1f} min)",
          "drops clearly" if before - after > 0.1 else "did NOT drop clearly"))
    del model


def timed(step) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def bench_step(args, tokenizer, examples) -> None:
    from peft import AdaptionPromptConfig, get_peft_model

    collate = PadCollator(tokenizer.pad_token_id)
    lengths = [len(e["input_ids"]) for e in examples]
    batches = [collate([examples[i] for i in b]) for b in epoch_batches(lengths, args.batch_size, args.seed, 0)]
    batches = batches[:args.warmup + args.reps]
    for batch in batches:
        batch["n_labels"] = int((batch["labels"][:, 1:] != -100).sum())
    ours, _ = load_base(args.base, dtype=args.dtype)
    torch.manual_seed(args.seed)
    attach_adapter(ours, AdapterConfig(adapter_len=10, adapter_layers=30))
    ours.train()
    ours_optimizer = build_optimizer(ours, TrainConfig(), 1e-3)
    base, _ = load_base(args.base, dtype=args.dtype)
    peft = get_peft_model(base, AdaptionPromptConfig(adapter_len=10, adapter_layers=30, task_type="CAUSAL_LM"))
    peft.train()
    peft_optimizer = torch.optim.AdamW([p for p in peft.parameters() if p.requires_grad], lr=1e-3, betas=(0.9, 0.95))

    def our_step(batch):  # the trainer's inner loop; it counts labelled tokens from the plan, outside the step
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = lm_loss_sum(ours, batch) / batch["n_labels"]
        loss.backward()
        ours_optimizer.step()
        ours_optimizer.zero_grad(set_to_none=True)

    def peft_step(batch):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = peft(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        labels=batch["labels"]).loss
        loss.backward()
        peft_optimizer.step()
        peft_optimizer.zero_grad(set_to_none=True)

    times = {"ours": [], "peft": []}
    for index, batch in enumerate(batches):
        ours_time, peft_time = timed(lambda: our_step(batch)), timed(lambda: peft_step(batch))
        if index >= args.warmup:
            times["ours"].append(ours_time)
            times["peft"].append(peft_time)
    ours_s, peft_s = statistics.median(times["ours"]), statistics.median(times["peft"])
    shape = [tuple(b["input_ids"].shape) for b in batches[args.warmup:]]
    emit({"figure": "c_step_time", "dtype": args.dtype or "fp32", "autocast": "bf16", "batches": shape,
          "ours_s": round(ours_s, 4), "peft_s": round(peft_s, 4), "speedup": round(peft_s / ours_s, 3),
          "target_min": 1.3, "threads": torch.get_num_threads()},
         (f"(c) step time, {args.dtype or 'fp32'} weights + bf16 autocast, ours vs PEFT",
          f"{ours_s:.3f} s vs {peft_s:.3f} s = {peft_s / ours_s:.2f}x", ">= 1.3x " + ("met" if peft_s / ours_s >= 1.3
                                                                                    else "MISSED")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--base", default="smollm2-135m")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="bf16", help="base weights dtype")
    parser.add_argument("--max-seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--heldout", type=int, default=200)
    parser.add_argument("--train-records", type=int, default=1000, help="records of the rest trained on in (b)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup-epochs", type=float, default=0.1)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=["a", "b", "c"], nargs="+", default=["a", "b", "c"])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; on a shared 2-core machine 2 threads fighting other jobs run ~10x slower")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = read_alpaca(args.data, skip_bad=True)
    print(json.dumps({"data": str(data.path), "records": len(data.records), "skipped_bad": data.skipped,
                      "torch_threads": torch.get_num_threads()}), flush=True)
    _, tokenizer = load_base(args.base)
    examples, too_long = encode_alpaca(tokenizer, data.records, args.max_seq_len)
    print(json.dumps({"examples": len(examples), "dropped_too_long": too_long}), flush=True)
    rest, held_out = examples[:-args.heldout], examples[-args.heldout:]
    if "a" in args.only:
        bench_padding(examples, args.batch_size, args.max_seq_len, args.seed)
    if "c" in args.only:
        bench_step(args, tokenizer, rest)
    if "b" in args.only:
        bench_loss(args, tokenizer, rest[:args.train_records], held_out)
    print("\n| figure | measured | target |\n|---|---|---|")
    for row in ROWS:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
