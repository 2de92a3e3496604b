"""Fine-tune a LLaMA-Adapter on ScienceQA (text-only: image questions get their caption as context).

    python scripts/finetune_scienceqa.py --data ../shared/data/scienceqa --out runs/sqa
    python scripts/finetune_scienceqa.py --hf derek-thomas/ScienceQA --out runs/sqa --no-captions
    python scripts/finetune_scienceqa.py --data DATA --out runs/sqa_img --images --clip-model ViT-B-32

--images trains the multimodal adapter: each problem's image (official images/<split>/<pid>/image.png,
or the HF layout's image column) goes through a frozen open_clip encoder once, before training
(features cached on disk), and a trainable projection adds it to every adaption prompt. The
adapter files then record the visual config, so scripts/eval_scienceqa.py loads them in one call.
Without --images nothing changes. --clip-pretrained takes a tag (downloads; refused unless
MM_ADAPTER_ALLOW_DOWNLOAD=1) or a local checkpoint file; without it the encoder has random weights.

Trains on --train-split, scores --val-split every --val-every steps (and at the end) in score mode,
and keeps the adapter with the best validation accuracy as best.safetensors (adapter.safetensors is
the last step's). Outputs in --out: best.safetensors, adapter.safetensors, validation.jsonl,
metrics.jsonl, loss.png, checkpoints/. Evaluate on test with scripts/eval_scienceqa.py --adapter.

Preset "smollm2-cpu" (defaults; any flag given wins): SmolLM2-135M in bf16, adapter 10 x 30,
QCM->A with captions, 4 epochs, 0.5 warmup epochs, absolute lr 5e-3, batch 8, max_seq_len 512.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval.run import EvalConfig  # noqa: E402
from eval.sqa_train import ValidationSelector, encode_problems, format_metadata  # noqa: E402
from eval.sqa_visual import (ImageOffsets, VisualExport, attach_projection, compute_features,  # noqa: E402
                             multimodal_loss, report_skipped, with_features)
from mm_adapter import attach_adapter, count_trainable, load_base, save_adapter  # noqa: E402
from mm_adapter.train import train  # noqa: E402
from mm_adapter.train_data import BatchPlan, PadCollator  # noqa: E402
from mm_adapter.visual import PROJECTIONS, VisualConfig, VisualProjection, build_encoder, trainable_summary  # noqa: E402
from scienceqa.data import read_official  # noqa: E402
from scienceqa.hf import load_hf  # noqa: E402
from scienceqa.prompts import PromptFormat  # noqa: E402
from scripts._cli import run  # noqa: E402
from scripts._train_args import adapter_config, add_train_arguments, apply_preset, start_run, train_config  # noqa: E402

PRESET = dict(adapter_len=10, adapter_layers=30, epochs=4, warmup_epochs=0.5, base_lr=9e-3, lr=5e-3,
              weight_decay=0.02, max_seq_len=512, batch_size=8, accum_steps=1, dtype="bf16", bf16=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="official layout: problems.json, pid_splits.json, captions.json")
    source.add_argument("--hf", help="Hugging Face layout: parquet file/folder or hub name")
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--val-split", default="val")
    parser.add_argument("--val-limit", type=int, help="score only the first N val problems (faster selection)")
    parser.add_argument("--val-every", type=int, help="optimizer steps between validations (default: each epoch)")
    parser.add_argument("--format", default=PromptFormat.QCM_A.value, help="QCM-A, CQM-A, QCM-LEA, QCM-ALE, or QCM-T (answer by option text)")
    parser.add_argument("--captions", action=argparse.BooleanOptionalAction, default=True,
                        help="image questions get their caption as context")
    add_train_arguments(parser)
    add_image_arguments(parser)
    return apply_preset(parser.parse_args(argv), PRESET)


def clip_layers(text: str) -> int | tuple[int, ...]:
    """"4" (evenly spaced depths) or "6,12,18,24" (explicit 1-based depths)."""
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int or a comma list of ints, got {text!r}") from None
    return values[0] if len(values) == 1 else values


def add_image_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("images (multimodal adapter; all ignored without --images)")
    group.add_argument("--images", action="store_true", help="train with each problem's image features")
    group.add_argument("--clip-model", default="ViT-L-14", help="open_clip ViT name (paper: ViT-L-14)")
    group.add_argument("--clip-pretrained", help="pretrained tag or local checkpoint file (default: random weights)")
    group.add_argument("--clip-layers", type=clip_layers, default=4, help="N evenly spaced depths or 1-based list")
    group.add_argument("--clip-seed", type=int, default=0, help="seed of random encoder weights")
    group.add_argument("--visual-projection", choices=PROJECTIONS, default="mlp")
    group.add_argument("--visual-hidden", type=int, default=64, help="bottleneck width of the mlp projection")
    group.add_argument("--visual-standardize", action=argparse.BooleanOptionalAction, default=True,
                       help="standardise features with the training images' mean/std (needed for random encoders)")
    group.add_argument("--visual-lr-scale", type=float, default=0.01,
                       help="lr of the projection's widest layer = lr x this (narrower ones: scaled by fan-in, see "
                            "eval.sqa_visual.attach_projection); at the prompts' lr its first layer's units die")
    group.add_argument("--skip-bad-images", action="store_true",
                       help="a missing/corrupt image makes its problem a no-image problem (counted) instead of an error")
    group.add_argument("--feature-batch-size", type=int, default=32, help="images per encoder forward")


@dataclass
class ImageRun:
    """What --images changes in the training call."""

    examples: list
    offsets: ImageOffsets
    export: VisualExport
    identity: dict


def prepare_images(args: argparse.Namespace, model, examples: list, train_problems: list, val_problems: list,
                   device, say) -> ImageRun:
    """Encoder, features of train and val problems (once, through the cache), projection on the model."""
    config = VisualConfig(clip_model=args.clip_model, pretrained=args.clip_pretrained, layers=args.clip_layers,
                          projection=args.visual_projection, hidden_dim=args.visual_hidden, seed=args.clip_seed,
                          standardize=args.visual_standardize)
    encoder = build_encoder(config, device)
    root = args.data if args.data else None
    features = compute_features(encoder, train_problems, root, args.skip_bad_images, args.feature_batch_size)
    report_skipped(features, args.train_split)
    train_rows, train_mask = features.rows(train_problems)
    val_features = compute_features(encoder, val_problems, root, args.skip_bad_images, args.feature_batch_size)
    report_skipped(val_features, args.val_split)
    features.by_pid |= val_features.by_pid
    say(f"image features: {len(features.by_pid)} problems with an image, encoder {config.clip_model} depths "
        f"{encoder.depths} ({encoder.feature_dim} features)")
    hidden = model.config.get_text_config().hidden_size
    projection = VisualProjection(encoder.feature_dim, hidden, config, device=device)
    if config.standardize and train_mask.any():
        projection.set_feature_stats(train_rows[train_mask])
    say(trainable_summary(model, projection))
    attach_projection(model, projection, args.visual_lr_scale)
    identity = {"visual": config.to_dict(), "encoder": encoder.identity, "visual_lr_scale": args.visual_lr_scale,
                "image_features": features.fingerprint(train_problems)}
    return ImageRun(with_features(examples, train_problems, features), ImageOffsets(projection, features),
                    VisualExport(config, projection, encoder), identity)


def load_split(args: argparse.Namespace, split: str):
    if args.data:
        return read_official(args.data, split=split, captions=args.captions)[0]
    return load_hf(args.hf, split)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info, say = start_run(args)
    train_problems, val_problems = load_split(args, args.train_split), load_split(args, args.val_split)
    val_problems = val_problems[:args.val_limit] if args.val_limit else val_problems
    model, tokenizer = load_base(args.base, dtype=args.dtype)
    examples, kept = encode_problems(tokenizer, train_problems, args.format, args.captions, args.max_seq_len)
    if len(kept) < len(train_problems):
        say(f"left out {len(train_problems) - len(kept)} problem(s) longer than max_seq_len={args.max_seq_len}")
    torch.manual_seed(args.seed)
    attach_adapter(model, adapter_config(args))
    images = prepare_images(args, model, examples, kept, val_problems, info.device, say) if args.images else None
    say(f"{len(examples)} training problems, {len(val_problems)} val; "
        f"{count_trainable(model):,} trainable parameters; world size {info.world_size}")
    config = train_config(args)

    def file_extras() -> tuple[dict, dict]:
        """What every adapter file of this run carries besides prompts and gates (the visual parts, the format)."""
        tensors, metadata = images.export.extras() if images else ({}, {})
        return tensors, metadata | format_metadata(args.format)

    plan = BatchPlan([len(e["input_ids"]) for e in examples], config.batch_size, config.seed, config.epochs,
                     info.world_size, config.accum_steps, config.group_batches)
    every = args.val_every or max(1, plan.total_steps // config.epochs)
    selector = ValidationSelector(tokenizer, val_problems, Path(args.out), every, plan.total_steps,
                                  EvalConfig(fmt=args.format, use_caption=args.captions, bf16=bool(args.bf16),
                                             batch_size=16), is_main=info.is_main,
                                  offsets=images and images.offsets, extras=file_extras)
    identity = {"base_dtype": args.dtype, "task": "scienceqa", "format": args.format, "captions": args.captions}
    multimodal = {} if images is None else dict(forward_loss=multimodal_loss)  # text-only: the trainer's loss
    result = train(model, images.examples if images else examples, config, PadCollator(tokenizer.pad_token_id),
                   on_step_end=selector, identity=identity | (images.identity if images else {}),
                   export=lambda m, path: save_adapter(m, path, *file_extras()), **multimodal)
    say(f"done: {result.steps} steps; best val accuracy {selector.best:.4f} at step {selector.best_step} "
        f"-> {Path(args.out) / 'best.safetensors'}")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    run(main)
