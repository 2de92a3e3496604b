"""The main job: data -> multimodal adapter training on SmolLM2 -> evaluation table -> one demo answer.

Data, in order: a local official-layout ScienceQA given with --data; the Hugging Face copy when
the hub answers within seconds (never here: HF_HUB_OFFLINE is set by scripts/main.sh); else the
embedded default, a generated ScienceQA-format image set (scienceqa/synthetic.py) whose answers
are visible only in the images. Everything goes to a fresh folder under --runs.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from scripts._cli import run  # noqa: E402

HUB_HOST, HUB_DATASET = "huggingface.co", "derek-thomas/ScienceQA"


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub answers quickly; offline settings and closed networks say no in seconds."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        return False
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


def fresh_folder(root: Path) -> Path:
    """``root/main-<time>``: a new run never overwrites an earlier one."""
    folder = root / time.strftime("main-%Y%m%d-%H%M%S")
    folder.mkdir(parents=True, exist_ok=False)
    return folder


def choose_data(args: argparse.Namespace, out: Path) -> tuple[list[str], str]:
    """Data flags for the training/evaluation scripts, and a line saying what was chosen."""
    if args.data:
        return ["--data", str(args.data)], f"local ScienceQA at {args.data}"
    if not args.no_hub and hub_reachable():
        return ["--hf", HUB_DATASET], f"the hub copy {HUB_DATASET}"
    from scienceqa.synthetic import generate

    folder = generate(out / "data", {"train": args.n_train, "val": args.n_val, "test": args.n_test}, seed=args.seed)
    return ["--data", str(folder)], (f"generated image questions ({args.n_train} train / {args.n_val} val / "
                                     f"{args.n_test} test) in {folder}; no ScienceQA given or reachable")


def first_image_problem(data_flags: list[str], split: str):
    from scienceqa.data import image_path, read_official

    if data_flags[0] != "--data":
        return None, None
    root = Path(data_flags[1])
    for problem in read_official(root, split=split, captions=False)[0]:
        if problem.has_image:
            return problem, image_path(problem, root)
    return None, None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="a local official-layout ScienceQA folder (with images/)")
    parser.add_argument("--no-hub", action="store_true", help="do not try the Hugging Face hub")
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="parent folder of the run's outputs")
    parser.add_argument("--base", default="smollm2-135m")
    parser.add_argument("--clip-model", default="ViT-B-32", help="open_clip encoder (random weights here)")
    parser.add_argument("--clip-layers", default="4", help="N evenly spaced encoder depths, or a 1-based list")
    parser.add_argument("--n-train", type=int, default=600)
    parser.add_argument("--n-val", type=int, default=60)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-2)
    parser.add_argument("--adapter-layers", type=int, default=8,
                        help="top layers adapted (8 of SmolLM2's 30: the backward stops below them)")
    parser.add_argument("--format", default="QCM-T",
                        help="prompt format (QCM-T: answer by option text, which a 135M model learns; QCM-A: letters)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    out = fresh_folder(args.runs)
    data_flags, said = choose_data(args, out)
    print(f"[1/4] data: {said}", flush=True)

    from scripts import eval_scienceqa, finetune_scienceqa

    train_dir = out / "adapter"
    print(f"[2/4] training a multimodal adapter on {args.base} -> {train_dir}", flush=True)
    code = finetune_scienceqa.main([*data_flags, "--out", str(train_dir), "--base", args.base, "--images",
                                    "--clip-model", args.clip_model, "--clip-layers", args.clip_layers,
                                    "--epochs", str(args.epochs),
                                    "--lr", str(args.lr), "--seed", str(args.seed), "--threads", str(args.threads),
                                    "--adapter-layers", str(args.adapter_layers), "--format", args.format])
    if code:
        return code
    adapter = train_dir / "best.safetensors"
    predictions = out / "test_predictions.json"
    print(f"[3/4] evaluating {adapter.name} on test -> {predictions}", flush=True)
    code = eval_scienceqa.main([*data_flags, "--split", "test", "--adapter", str(adapter), "--base", args.base,
                                "--bf16", "--out", str(predictions), "--name", "mm-adapter (SmolLM2-135M, images)",
                                "--no-progress"])
    if code:
        return code
    if data_flags[0] == "--data":
        from eval import table

        table.main([str(predictions), "--problems", data_flags[1], "--markdown", str(out / "table.md"),
                    "--plot", str(out / "table.png")])
        print(f"      table: {out / 'table.md'}, chart: {out / 'table.png'}")

    problem, image = first_image_problem(data_flags, "test")
    if problem is not None:
        from eval.predictor import Predictor

        prediction = Predictor.load(args.base, adapter).predict(image, problem.question, problem.choices,
                                                                problem.hint)
        print(f"[4/4] demo: {image}\n      Q: {problem.question}")
        for letter_index, (choice, probability) in enumerate(zip(problem.choices, prediction.probabilities)):
            mark = "*" if letter_index == prediction.choice_index else " "
            print(f"      {mark} ({chr(65 + letter_index)}) {choice}: {probability:.1%}")
        print(f"      answer: ({prediction.letter}) {prediction.text}; correct: ({chr(65 + problem.answer)})")
    print(f"done in {time.perf_counter() - started:.0f} s; outputs in {out}")
    return 0


if __name__ == "__main__":
    run(main)
