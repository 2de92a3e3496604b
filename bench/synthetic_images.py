"""Benchmark: generated image questions whose answer is only in the picture, with images vs text only.

Generates the synthetic ScienceQA-format set (``scienceqa.synthetic``; kept in the cache folder and
reused), then trains two adapters on SmolLM2-135M with the same data, settings and budget through
``scripts/finetune_scienceqa.py`` — (a) ``--images`` (frozen random-weight CLIP encoder, features
once through the disk cache, trainable projection into the prompts) and (b) text only — and
evaluates each one's best.safetensors on test with ``scripts/eval_scienceqa.py``. Prints one JSON
line per run and the ScienceQA table (IMG is the column that matters: chance there is ~31%).

    OMP_NUM_THREADS=1 python bench/synthetic_images.py --threads 1

Encoder: random-weight ViT-B-32 (4 depths). Linear probe, 200 pictures per family
(scripts/probe_synthetic.py, held-out accuracy vs majority): concentration 0.70 vs 0.38 (mm-tiny-vit:
0.40, unreadable), continent 1.00 (tiny 1.00), solution_color 1.00 (1.00), shape_word 0.62 (0.84).
Its features cost ~8 images/s on one busy core, once (the disk cache serves every later epoch and
rerun), against minutes of LM training per run, so the better probe wins; --clip-model mm-tiny-vit
is the fast alternative. The projection trains at lr x 0.01 (finetune_scienceqa --visual-lr-scale).

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

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mm_adapter.base import cache_root  # noqa: E402
from scienceqa.data import read_official  # noqa: E402
from scienceqa.metrics import score  # noqa: E402
from scienceqa.predictions import load_predictions  # noqa: E402
from scienceqa.report import markdown, to_dict  # noqa: E402
from scienceqa.synthetic import generate  # noqa: E402
from scripts import eval_scienceqa, finetune_scienceqa  # noqa: E402


@dataclass(frozen=True)
class Budget:
    """One training budget for both runs (flags of scripts/finetune_scienceqa.py)."""

    epochs: int = 4
    lr: float = 3e-2
    batch_size: int = 8
    adapter_len: int = 10
    adapter_layers: int = 8
    warmup_epochs: float = 0.5

    def flags(self) -> list[str]:
        return ["--epochs", str(self.epochs), "--lr", str(self.lr), "--batch-size", str(self.batch_size),
                "--adapter-len", str(self.adapter_len), "--adapter-layers", str(self.adapter_layers),
                "--warmup-epochs", str(self.warmup_epochs)]


def dataset(sizes: dict[str, int], seed: int) -> Path:
    """The generated set in the cache folder (generated once per sizes and seed)."""
    folder = cache_root() / "bench" / f"synthetic-{seed}-{'-'.join(str(n) for n in sizes.values())}"
    if not (folder / "pid_splits.json").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".synthetic-", dir=folder.parent))  # complete or absent
        generate(staging, sizes, seed, overwrite=True)
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
    return folder


def run_one(name: str, data: Path, out: Path, budget: Budget, common: list[str], extra: list[str]) -> dict:
    """Train with the fine-tuning script, evaluate best.safetensors on test with the eval script."""
    started = time.perf_counter()
    finetune_scienceqa.main(["--data", str(data), "--out", str(out / name), *budget.flags(), *common, *extra])
    train_s = time.perf_counter() - started
    predictions = out / f"{name}-test.json"
    started = time.perf_counter()
    eval_scienceqa.main(["--data", str(data), "--split", "test", "--adapter", str(out / name / "best.safetensors"),
                         "--out", str(predictions), "--name", name, "--bootstrap", "0", "--no-progress",
                         "--bf16", "--batch-size", "16"])
    return {"name": name, "train_s": round(train_s, 1), "eval_s": round(time.perf_counter() - started, 1),
            "predictions": predictions}


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
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # weight-loading bars would drown the figures
    budget = Budget(epochs=args.epochs, lr=args.lr, adapter_layers=args.adapter_layers)
    data = dataset({"train": args.n_train, "val": args.n_val, "test": args.n_test}, args.seed)
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-synthetic-"))
    common = ["--val-limit", str(args.val_limit), "--no-progress", "--threads", str(args.threads),
              "--seed", str(args.seed), "--format", args.format]
    image_flags = ["--images", "--clip-model", args.clip_model, "--clip-layers", args.clip_layers]
    runs = {"images": image_flags, "text": []}
    rows, problems = [], {p.pid: p for p in read_official(data, "test")[0]}
    try:
        for name, extra in runs.items():
            if args.only and name != args.only:
                continue
            result = run_one(name, data, out, budget, common, extra)
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
