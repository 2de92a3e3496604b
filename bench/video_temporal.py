"""Ordered frames vs shuffled frames vs the middle frame on the generated video set (issue 16, item 3).

Generates the set (``scienceqa.synthetic_video``) unless OUT/data holds one, runs the video ablation through the
``ablate scienceqa`` job (baseline: K frames in time order; variants: the same frames shuffled per clip, and
``--frames 1``, the middle frame alone; every other setting and the budget the same, each checkpoint chosen on
val), evaluates each variant's best adapter on test once, and writes the test table (bootstrap intervals,
McNemar against the ordered frames) and the accuracy per question family and on the temporal questions
(``synthetic_video.TEMPORAL``). Resumable: finished runs and evaluations are kept.

    python -m bench.video_temporal --out runs/video --threads 1

The same as commands (what this script runs, in order):

    python -m scienceqa.synthetic_video runs/video/data --n-train 600 --n-val 60 --n-test 200
    mm-adapter ablate scienceqa --data runs/video/data --out runs/video/ablation --images --frames 8 \\
        --clip-model ViT-B-32 --clip-layers 4 --visual-standardize --adapter-layers 8 --lr 3e-2 \\
        --warmup-epochs 0.5 --epochs 4 --gate-inits --layers --lengths --activations --no-blanked \\
        --frame-orders shuffled --frame-counts 1
    mm-adapter eval scienceqa --data runs/video/data --split test --out runs/video/test-ordered \\
        --adapter runs/video/ablation/baseline/best.safetensors        # and order-shuffled, frames-1
    mm-adapter table runs/video/test-* --problems runs/video/data --bootstrap 1000 --mcnemar-against ordered
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mm_adapter.data.config import ScienceQASource
from mm_adapter.encoders.config import VisualConfig
from mm_adapter.eval.config import EvalConfig, TableConfig
from mm_adapter.eval.table import build_table
from mm_adapter.jobs.ablate import ablate_scienceqa
from mm_adapter.jobs.configs.ablation import AblateConfig
from mm_adapter.jobs.configs.evaluation import EvalScienceQAConfig
from mm_adapter.jobs.eval_scienceqa import eval_scienceqa
from mm_adapter.model.base import DEFAULT_SPEC
from mm_adapter.model.config import AdapterConfig, ModelOptions
from mm_adapter.scienceqa.synthetic import generate
from mm_adapter.scienceqa.synthetic_video import TEMPORAL, draw_clip_problem
from mm_adapter.training.config import TrainConfig

VARIANTS = {"ordered": "baseline", "shuffled": "order-shuffled", "middle frame": "frames-1"}  # name -> ablation run


def ablation_config(args: argparse.Namespace, data: Path) -> AblateConfig:
    """The main job's multimodal recipe (by default 8 of 30 layers, lr 3e-2, 4 epochs, random ViT-B-32) with K frames
    per clip; only the frame axes vary."""
    return AblateConfig(
        out=str(args.out / "ablation"), source=ScienceQASource(data=str(data)), images=True,
        model=ModelOptions(base=args.base, dtype="bf16", threads=args.threads),
        adapter=AdapterConfig(adapter_layers=args.adapter_layers),
        train=TrainConfig(epochs=args.epochs, warmup_epochs=0.5, lr=3e-2, batch_size=8, seed=args.seed,
                          progress=not args.quiet),
        visual=VisualConfig(clip_model=args.clip_model, clip_layers=args.clip_layers, visual_standardize=True,
                            frames=args.frames),
        gate_inits=[], layers=[], lengths=[], activations=[], blanked=False, frame_orders=["shuffled"],
        frame_counts=[1])


def family_accuracy(problems: dict, predictions: Path) -> dict[str, tuple[int, int]]:
    """(correct, total) per question family of the test split, plus "temporal" (the families that need order)."""
    answers = json.loads(predictions.read_text())["results"]
    counts: dict[str, list[int]] = {}
    for pid, answer in answers.items():
        family = problems[pid].get("family", "?")
        right = int(answer == problems[pid]["answer"])
        for key in (family, "temporal") if family in TEMPORAL else (family,):
            counts.setdefault(key, [0, 0])
            counts[key][0] += right
            counts[key][1] += 1
    return {key: (right, total) for key, (right, total) in counts.items()}


def family_table(rows: dict[str, dict[str, tuple[int, int]]]) -> str:
    """Markdown: one row per variant, one column per family (temporal first), accuracy % (n)."""
    columns = ["temporal", *sorted({key for row in rows.values() for key in row} - {"temporal"})]
    lines = ["| frames | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for name, row in rows.items():
        cells = [f"{100 * row[c][0] / row[c][1]:.1f} ({row[c][1]})" if c in row else "-" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder of the data, the ablation and the tables")
    parser.add_argument("--base", default=DEFAULT_SPEC, help="base model (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--clip-model", default="ViT-B-32", help="open_clip encoder (random weights offline)")
    parser.add_argument("--clip-layers", type=int, default=4, help="evenly spaced encoder depths")
    parser.add_argument("--adapter-layers", type=int, default=8)
    parser.add_argument("--frames", type=int, default=8, help="frames per clip of the ordered and shuffled runs")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--sizes", type=int, nargs=3, default=(600, 60, 200), metavar=("TRAIN", "VAL", "TEST"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    data = args.out / "data"
    if not (data / "pid_splits.json").is_file():
        generate(data, dict(zip(("train", "val", "test"), args.sizes)), seed=args.seed, draw=draw_clip_problem)
    ablation = ablate_scienceqa(ablation_config(args, data))
    print(ablation.markdown, flush=True)
    problems = json.loads((data / "problems.json").read_text())
    by_family, predictions = {}, []
    for name, variant in VARIANTS.items():
        out = args.out / f"test-{name.split()[0]}"
        if not (out / "predictions.json").is_file():
            eval_scienceqa(EvalScienceQAConfig(
                split="test", out=str(out), source=ScienceQASource(data=str(data)), name=name, bootstrap=0,
                adapter=str(ablation.out / variant / "best.safetensors"), progress=not args.quiet,
                model=ModelOptions(base=args.base, threads=args.threads), eval=EvalConfig(bf16=True)))
        predictions.append(str(out / "predictions.json"))
        by_family[name] = family_accuracy(problems, out / "predictions.json")
    table = build_table(TableConfig(predictions=predictions, problems=str(data), bootstrap=1000,
                                    mcnemar_against="ordered", markdown=str(args.out / "table.md"),
                                    json=str(args.out / "table.json"), plot=str(args.out / "table.png"),
                                    title="generated video set, test"))
    families = family_table(by_family)
    (args.out / "families.md").write_text(families)
    print(table.markdown, families, sep="\n", flush=True)
    if "temporal" not in by_family["ordered"]:
        print("no temporal questions in the test split", flush=True)
        return 0
    ordered, shuffled = (by_family[name]["temporal"] for name in ("ordered", "shuffled"))
    gap = 100 * (ordered[0] / ordered[1] - shuffled[0] / shuffled[1])
    print(f"temporal questions on test: ordered - shuffled = {gap:+.1f} points (target >= +25)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
