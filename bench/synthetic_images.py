"""Benchmark: generated image questions whose answer is only in the picture, with images vs text only.

Generates the synthetic ScienceQA-format set (``scienceqa.synthetic``; kept in the cache folder and
reused), then trains two adapters on SmolLM2-135M with the same data, settings and budget through
the ``train scienceqa`` job — (a) with images (frozen random-weight CLIP encoder, features once
through the disk cache, trainable projection into the prompts) and (b) text only — and evaluates
each one's best.safetensors on test with the ``eval scienceqa`` job. Prints one JSON line per run
and the ScienceQA table (IMG is the column that matters: chance there is ~31%).

    OMP_NUM_THREADS=1 python -m bench.synthetic_images --threads 1

Encoder: random-weight ViT-B-32 (4 depths). Linear probe, 200 pictures per family
(bench/probe_synthetic.py, held-out accuracy vs majority): concentration 0.70 vs 0.38 (mm-tiny-vit:
0.40, unreadable), continent 1.00 (tiny 1.00), solution_color 1.00 (1.00), shape_word 0.62 (0.84).
Its features cost ~8 images/s on one busy core, once (the disk cache serves every later epoch and
rerun), against minutes of LM training per run, so the better probe wins; --clip-model mm-tiny-vit
is the fast alternative. The projection trains at lr x 0.01 (train scienceqa --visual-lr-scale).

The figures are for this set and budget, not for real ScienceQA; see the closing note of issue 4.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from mm_adapter.data.config import ScienceQASource
from mm_adapter.encoders.config import VisualConfig, parse_depths
from mm_adapter.eval.config import EvalConfig
from mm_adapter.files.atomic import atomic_dir
from mm_adapter.jobs.configs.evaluation import EvalScienceQAConfig
from mm_adapter.jobs.configs.training import TrainScienceQAConfig
from mm_adapter.jobs.eval_scienceqa import eval_scienceqa
from mm_adapter.jobs.train_scienceqa import train_scienceqa
from mm_adapter.model.base import cache_root
from mm_adapter.model.config import AdapterConfig, ModelOptions
from mm_adapter.scienceqa.data import read_official
from mm_adapter.scienceqa.metrics import score
from mm_adapter.scienceqa.predictions import load_predictions
from mm_adapter.scienceqa.report import markdown, to_dict
from mm_adapter.scienceqa.synthetic import generate
from mm_adapter.training.config import TrainConfig


@dataclass(frozen=True)
class Budget:
    """One training budget for both runs."""

    epochs: int = 4
    lr: float = 3e-2
    batch_size: int = 8
    adapter_len: int = 10
    adapter_layers: int = 8
    warmup_epochs: float = 0.5


def dataset(sizes: dict[str, int], seed: int) -> Path:
    """The generated set in the cache folder (generated once per sizes and seed)."""
    folder = cache_root() / "bench" / f"synthetic-{seed}-{'-'.join(str(n) for n in sizes.values())}"
    if not (folder / "pid_splits.json").is_file():
        with atomic_dir(folder, overwrite=True) as staging:  # complete or absent
            generate(staging, sizes, seed, overwrite=True)
    return folder


def run_one(name: str, data: Path, out: Path, budget: Budget, args: argparse.Namespace, images: bool) -> dict:
    """Train with the train-scienceqa job, evaluate best.safetensors on test with the eval job."""
    model = ModelOptions(dtype="bf16", threads=args.threads)
    started = time.perf_counter()
    trained = train_scienceqa(TrainScienceQAConfig(
        out=str(out / name), source=ScienceQASource(data=str(data)), val_limit=args.val_limit, format=args.format,
        images=images, model=model, adapter=AdapterConfig(adapter_len=budget.adapter_len,
                                                          adapter_layers=budget.adapter_layers),
        train=TrainConfig(epochs=budget.epochs, lr=budget.lr, batch_size=budget.batch_size,
                          warmup_epochs=budget.warmup_epochs, seed=args.seed, progress=False),
        visual=VisualConfig(clip_model=args.clip_model, clip_layers=parse_depths(args.clip_layers),
                            visual_standardize=True)))
    train_s = time.perf_counter() - started
    started = time.perf_counter()
    evaluated = eval_scienceqa(EvalScienceQAConfig(
        split="test", out=str(out / f"{name}-test"), source=ScienceQASource(data=str(data)),
        adapter=str(trained.best_path), name=name, bootstrap=0, progress=False,
        model=ModelOptions(threads=args.threads), eval=EvalConfig(bf16=True, batch_size=16)))
    return {"name": name, "train_s": round(train_s, 1), "eval_s": round(time.perf_counter() - started, 1),
            "predictions": evaluated.predictions}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-train", type=int, default=600)
    parser.add_argument("--n-val", type=int, default=150)
    parser.add_argument("--n-test", type=int, default=300)
    parser.add_argument("--val-limit", type=int, default=60, help="val problems scored per validation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clip-model", default="ViT-B-32", help="random-weight encoder (mm-tiny-vit: faster)")
    parser.add_argument("--clip-layers", default="4")
    parser.add_argument("--epochs", type=int, default=Budget.epochs)
    parser.add_argument("--lr", type=float, default=Budget.lr)
    parser.add_argument("--adapter-layers", type=int, default=Budget.adapter_layers)
    parser.add_argument("--out", type=Path, help="output folder (default: a temporary one, removed)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", choices=["images", "text"], help="run one of the two")
    parser.add_argument("--format", default="QCM-T", help="prompt format of both runs (QCM-A: answer by letter)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    budget = Budget(epochs=args.epochs, lr=args.lr, adapter_layers=args.adapter_layers)
    data = dataset({"train": args.n_train, "val": args.n_val, "test": args.n_test}, args.seed)
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-synthetic-"))
    runs = {"images": True, "text": False}
    rows, problems = [], {p.pid: p for p in read_official(data, "test")[0]}
    try:
        for name, images in runs.items():
            if args.only and name != args.only:
                continue
            result = run_one(name, data, out, budget, args, images)
            scores = score(load_predictions(result.pop("predictions")), problems, n_boot=0)
            rows.append(scores)
            print(json.dumps({**to_dict(scores), **result, "budget": budget.__dict__,
                              "encoder": args.clip_model if name == "images" else None, "format": args.format,
                              "data": {"train": args.n_train, "val": args.n_val, "test": args.n_test}}))
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)
    sys.stdout.write(markdown(rows, None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
