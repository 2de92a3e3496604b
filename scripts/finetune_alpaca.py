"""Fine-tune a LLaMA-Adapter on Alpaca instruction data.

    python scripts/finetune_alpaca.py --data alpaca_data.json --out runs/alpaca            # the paper's settings
    python scripts/finetune_alpaca.py --preset smollm2-cpu --data ../shared/data/alpaca/alpaca_5000.json \\
        --out runs/alpaca-cpu --skip-bad                                                     # minutes on a laptop CPU
    torchrun --nproc_per_node 8 scripts/finetune_alpaca.py --data alpaca_data.json --out runs/alpaca

Presets (any flag given explicitly wins):
  paper        adapter_len 10, adapter_layers 30, 5 epochs (2 warmup), base lr 9e-3 (lr = base x batch / 256),
               weight decay 0.02, max_seq_len 512, batch 4 per device.
  smollm2-cpu  SmolLM2-135M on a few CPU cores: adapter 10 x 30 (all 30 layers), base weights in bf16 with bf16
               autocast, 1 epoch over the first 1,000 records, 0.1 warmup epochs, absolute lr 3e-3, max_seq_len 512,
               batch 4. 250 steps; measured by scripts/bench_alpaca.py (same settings, 2 busy cores, --threads 1):
               14.5 min, loss on the last 200 records of alpaca_5000.json 2.233 -> 1.982 per response token.
Outputs in --out: adapter.safetensors, metrics.jsonl, loss.png, checkpoints/. Resume a killed run with --resume.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cli import run  # noqa: E402
from _train_args import adapter_config, add_train_arguments, apply_preset, start_run, train_config  # noqa: E402

from mm_adapter import attach_adapter, count_trainable, load_base  # noqa: E402
from mm_adapter.alpaca import encode_alpaca, read_alpaca  # noqa: E402
from mm_adapter.errors import MMAdapterError  # noqa: E402
from mm_adapter.train import train  # noqa: E402
from mm_adapter.train_data import PadCollator  # noqa: E402

PRESETS = {
    "paper": dict(adapter_len=10, adapter_layers=30, epochs=5, warmup_epochs=2.0, base_lr=9e-3, lr=None,
                  weight_decay=0.02, max_seq_len=512, batch_size=4, accum_steps=1, dtype="fp32", bf16=True,
                  max_records=None),
    "smollm2-cpu": dict(adapter_len=10, adapter_layers=30, epochs=1, warmup_epochs=0.1, base_lr=9e-3, lr=3e-3,
                        weight_decay=0.02, max_seq_len=512, batch_size=4, accum_steps=1, dtype="bf16", bf16=True,
                        max_records=1000),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="Alpaca JSON list or JSONL of {instruction, input, output}")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="paper")
    parser.add_argument("--max-records", type=int, help="use only the first N records")
    parser.add_argument("--skip-bad", action="store_true", help="skip malformed records (and say how many)")
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    return apply_preset(args, PRESETS[args.preset])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info, say = start_run(args)
    data = read_alpaca(args.data, skip_bad=args.skip_bad)
    if data.skipped:
        say(f"skipped {data.skipped} bad record(s) in {data.path}")
    records = data.records[:args.max_records] if args.max_records else data.records
    model, tokenizer = load_base(args.base, dtype=args.dtype)
    examples, too_long = encode_alpaca(tokenizer, records, args.max_seq_len)
    if too_long:
        say(f"dropped {too_long} record(s) whose prompt fills max_seq_len={args.max_seq_len}")
    if not examples:
        raise MMAdapterError(f"{data.path}: no record fits max_seq_len={args.max_seq_len}")
    torch.manual_seed(args.seed)  # same adapter initialisation on every rank
    attach_adapter(model, adapter_config(args))
    say(f"{len(examples)} examples, {count_trainable(model):,} trainable parameters, world size {info.world_size}")
    config = train_config(args)
    result = train(model, examples, config, PadCollator(tokenizer.pad_token_id),
                   identity={"base_dtype": args.dtype})
    if result.adapter_path:
        loss = "" if result.last_loss is None else f", last loss {result.last_loss:.4f}"
        say(f"done: {result.steps} steps{loss}; adapter {result.adapter_path}")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    run(main)
