"""Command-line flags shared by every fine-tuning script (one trainer, one set of flags)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from mm_adapter.config import AdapterConfig
from mm_adapter.train import TrainConfig, prepare_out_dir, setup_distributed


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Adapter and trainer flags; ``None`` defaults are filled from the script's preset."""
    parser.add_argument("--out", required=True, help="output folder (adapter, metrics, checkpoints)")
    parser.add_argument("--base", default="smollm2-135m", help="base model spec (see mm_adapter.load_base)")
    parser.add_argument("--adapter-len", type=int)
    parser.add_argument("--adapter-layers", type=int)
    parser.add_argument("--prompt-init", choices=["normal", "norm_scaled"],
                        help="normal: N(0,1) prompts (the original); norm_scaled: times the layer's input norm weight")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--warmup-epochs", type=float)
    parser.add_argument("--base-lr", type=float, help="lr = base_lr x effective batch / 256 (unless --lr)")
    parser.add_argument("--lr", type=float, help="absolute learning rate (overrides --base-lr)")
    parser.add_argument("--weight-decay", type=float)
    parser.add_argument("--max-seq-len", type=int)
    parser.add_argument("--batch-size", type=int, help="micro-batch per device")
    parser.add_argument("--accum-steps", type=int, help="gradient accumulation steps")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], help="dtype of the frozen base weights")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help="bf16 autocast")
    parser.add_argument("--grad-clip", type=float)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-every", type=int, default=100, help="optimizer steps between checkpoints")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--threads", type=int, help="torch CPU threads (fewer than cores when the machine is shared)")
    parser.add_argument("--no-progress", action="store_true")


def apply_preset(args: argparse.Namespace, preset: dict) -> argparse.Namespace:
    """Fill every flag the user did not give from ``preset``."""
    for key, value in preset.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    return args


def train_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(out_dir=args.out, epochs=args.epochs, warmup_epochs=args.warmup_epochs,
                       batch_size=args.batch_size, accum_steps=args.accum_steps, lr=args.lr, base_lr=args.base_lr,
                       weight_decay=args.weight_decay, grad_clip=args.grad_clip, bf16=args.bf16, seed=args.seed,
                       checkpoint_every=args.checkpoint_every, resume=args.resume, progress=not args.no_progress)


def adapter_config(args: argparse.Namespace) -> AdapterConfig:
    return AdapterConfig(adapter_len=args.adapter_len, adapter_layers=args.adapter_layers,
                         prompt_init=args.prompt_init or "normal")


def start_run(args: argparse.Namespace):
    """Threads, the process group and the output folder, before any slow work; returns (info, say).

    ``say`` prints on rank 0 only, so a torchrun job reports once.
    """
    if args.threads:
        torch.set_num_threads(args.threads)
    info = setup_distributed()
    say = print if info.is_main else (lambda *a, **k: None)
    prepare_out_dir(Path(args.out), args.resume, info.is_main)  # fail before the slow parts
    return info, say
