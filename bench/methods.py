"""LLaMA-Adapter against the other ways to adapt the same model, on equal terms (issue 14, item 1).

Every method trains on the same ScienceQA train split, prompt format, epochs, batch and schedule
through the one `train scienceqa` job; each gets the same size of learning-rate search (two values,
GRIDS below, chosen on val: the best checkpoint of the best lr), then its chosen run is evaluated
on test once. Resumable: a run whose final adapter exists is not trained again, a finished test
evaluation is not redone. Two workers can share the list on two cores (`--only`), or one method's search
(`--lr`: this value of its grid only; the worker that finishes the search last runs the test).

    python -m bench.methods --data ../shared/data/scienceqa --out runs/methods --threads 1 --only llama-adapter lora

Prints one JSON line per run (method, lr, best val accuracy, train seconds) and per test evaluation, then the
table of every method tested so far (OUT/table.md, .json, .png, and costs.png: Avg against trainable parameters),
the same as the command below, and the val of each lr tried (OUT/search.md):

    mm-adapter table runs/methods/*-test --problems ../shared/data/scienceqa/problems.json --bootstrap 1000 \\
        --mcnemar-against llama-adapter --costs --plot runs/methods/table.png --json runs/methods/table.json \\
        --cost-plot runs/methods/costs.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mm_adapter.data.config import ScienceQASource
from mm_adapter.eval.config import EvalConfig, TableConfig
from mm_adapter.eval.table import build_table
from mm_adapter.files.atomic import atomic_write_text
from mm_adapter.jobs.configs import EvalScienceQAConfig, TrainScienceQAConfig
from mm_adapter.jobs.eval_scienceqa import eval_scienceqa
from mm_adapter.jobs.train_scienceqa import train_scienceqa
from mm_adapter.methods.config import TuningConfig
from mm_adapter.model.base import DEFAULT_SPEC
from mm_adapter.model.config import AdapterConfig, ModelOptions
from mm_adapter.training.config import TrainConfig


@dataclass(frozen=True)
class Method:
    name: str  # the run's name in folders and tables
    tuning: TuningConfig
    lrs: tuple[float, float]  # the search: two values per method


# Parameter-efficient methods share one grid around ours (5e-3 is our measured best); LoRA's update is a product
# of two matrices and full fine-tuning moves every weight, so theirs are the usual decades lower.
GRIDS = {"prompt": (5e-3, 1e-2), "lora": (5e-4, 2e-3), "full": (1e-5, 5e-5)}
METHODS = (
    Method("llama-adapter", TuningConfig(), GRIDS["prompt"]),
    Method("llama-adapter-v2", TuningConfig(method="llama-adapter-v2"), GRIDS["prompt"]),
    Method("peft-adaption-prompt", TuningConfig(method="peft-adaption-prompt"), GRIDS["prompt"]),
    Method("lora", TuningConfig(method="lora"), GRIDS["lora"]),
    Method("lora-r16-all", TuningConfig(method="lora", lora_rank=16, lora_targets="all-linear"), GRIDS["lora"]),
    Method("prompt-tuning", TuningConfig(method="prompt-tuning"), GRIDS["prompt"]),
    Method("prefix-tuning", TuningConfig(method="prefix-tuning"), GRIDS["prompt"]),
    Method("full", TuningConfig(method="full"), GRIDS["full"]),
)


def run_folder(out: Path, method: Method, lr: float) -> Path:
    return out / f"{method.name}-lr{lr:g}"


def finished(folder: Path) -> bool:
    """A run is done when its last adapter exists (ours: a file; other methods: a folder)."""
    return (folder / "adapter.safetensors").is_file() or (folder / "adapter").is_dir()


def best_val(folder: Path) -> tuple[float, Path]:
    """The run's best val accuracy and its best checkpoint (validation.jsonl is written at each validation)."""
    rows = [json.loads(line) for line in (folder / "validation.jsonl").read_text().splitlines() if line.strip()]
    best = max(row["val_acc"] for row in rows)
    path = folder / "best.safetensors"
    return best, path if path.is_file() else folder / "best"


def train_one(args: argparse.Namespace, method: Method, lr: float) -> None:
    folder = run_folder(args.out, method, lr)
    if finished(folder):
        return
    started = time.perf_counter()
    train_scienceqa(TrainScienceQAConfig(
        out=str(folder), source=ScienceQASource(data=str(args.data)), val_limit=args.val_limit,
        model=ModelOptions(base=args.base, dtype="bf16", threads=args.threads),
        adapter=AdapterConfig(adapter_len=args.adapter_len, adapter_layers=args.adapter_layers,
                              prompt_init="norm_scaled"),
        tuning=method.tuning,
        train=TrainConfig(epochs=args.epochs, warmup_epochs=0.3, lr=lr, batch_size=args.batch_size,
                          progress=not args.quiet, resume=any((folder / "checkpoints").glob("step-*")))))
    print(json.dumps({"method": method.name, "lr": lr, "best_val": best_val(folder)[0],
                      "train_s": round(time.perf_counter() - started, 1)}), flush=True)


def test_best(args: argparse.Namespace, method: Method) -> None:
    """Evaluate the best val run of the method's lr search on test (once)."""
    scored = [(best_val(run_folder(args.out, method, lr)), lr) for lr in method.lrs]
    (val, adapter), lr = max(scored, key=lambda item: item[0][0])
    out = args.out / f"{method.name}-test"
    if (out / "predictions.json").is_file():
        return
    result = eval_scienceqa(EvalScienceQAConfig(
        split="test", out=str(out), source=ScienceQASource(data=str(args.data)), adapter=str(adapter),
        name=method.name, progress=not args.quiet, model=ModelOptions(base=args.base, threads=args.threads),
        eval=EvalConfig(bf16=True, batch_size=16)))
    print(json.dumps({"method": method.name, "chosen_lr": lr, "val": val, "test_avg": result.scores["Avg"].acc,
                      "eval_s": round(result.seconds, 1)}), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="official-layout ScienceQA folder")
    parser.add_argument("--out", type=Path, required=True, help="folder of every run and test evaluation")
    parser.add_argument("--only", nargs="+", choices=[m.name for m in METHODS], help="run these methods only")
    parser.add_argument("--base", default=DEFAULT_SPEC, help="base model (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--adapter-len", type=int, default=10, help="prompts per layer (and PEFT's prompt methods')")
    parser.add_argument("--adapter-layers", type=int, default=30, help="adapted layers (30: all of SmolLM2's)")
    parser.add_argument("--val-limit", type=int, default=None, help="first N val problems choose (None: all)")
    parser.add_argument("--lr", type=float, help="train only this learning rate of each method's grid")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    chosen = [m for m in METHODS if not args.only or m.name in args.only]
    if args.lr is not None and not any(args.lr in m.lrs for m in chosen):
        grids = ", ".join(sorted({f"{lr:g}" for m in chosen for lr in m.lrs}))
        parser.error(f"--lr {args.lr:g} is in no chosen method's grid ({grids})")
    for method in chosen:
        for lr in method.lrs:
            if args.lr is None or lr == args.lr:
                train_one(args, method, lr)
        if all(finished(run_folder(args.out, method, lr)) for lr in method.lrs):
            test_best(args, method)
    write_table(args)
    return 0


def search_table(out: Path) -> str:
    """The learning-rate search as Markdown: each method's best val accuracy at each lr of its grid (the chosen
    one in bold), for every run with a validation so far."""
    lines = ["| method | val at lr 1 (%) | val at lr 2 (%) | chosen lr |", "|---|---:|---:|---|"]
    for method in METHODS:
        folders = [(lr, run_folder(out, method, lr)) for lr in method.lrs]
        scores = {lr: best_val(folder)[0] for lr, folder in folders if (folder / "validation.jsonl").is_file()}
        if not scores:
            continue
        chosen = max(scores, key=scores.get) if len(scores) == len(method.lrs) else None
        cells = [f"{lr:g}: " + ("(not trained)" if lr not in scores else
                                f"**{100 * scores[lr]:.2f}**" if lr == chosen else f"{100 * scores[lr]:.2f}")
                 for lr in method.lrs]
        lines.append(f"| {method.name} | {' | '.join(cells)} | {'' if chosen is None else f'{chosen:g}'} |")
    return "\n".join(lines) + "\n"


def write_table(args: argparse.Namespace) -> None:
    """The comparison table of every method tested so far in OUT (all of METHODS, not only --only's): bootstrap
    intervals, McNemar of each against llama-adapter, the cost columns, two charts; OUT/table.md, .json, .png and
    costs.png. OUT/search.md is the learning-rate search (val per lr)."""
    tested = [str(args.out / f"{m.name}-test") for m in METHODS
              if (args.out / f"{m.name}-test" / "predictions.json").is_file()]
    atomic_write_text(args.out / "search.md", search_table(args.out))
    if not tested:
        return
    ours = "llama-adapter" if (args.out / "llama-adapter-test" / "predictions.json").is_file() else None
    table = build_table(TableConfig(
        predictions=tested, problems=str(args.data), bootstrap=1000, mcnemar_against=ours, costs=True,
        markdown=str(args.out / "table.md"), json=str(args.out / "table.json"), plot=str(args.out / "table.png"),
        cost_plot=str(args.out / "costs.png"),
        title="ScienceQA test, methods on equal terms"))
    print(table.markdown, flush=True)


if __name__ == "__main__":
    sys.exit(main())
