"""How the command prints a job's result (the jobs return objects; printing is the command's business)."""

from __future__ import annotations

import os
import sys

from ..demo.predictor import Prediction
from ..scienceqa.prompts import option_letters

BAR_WIDTH = 40


def trained(result) -> None:
    """A training run: steps, last loss, the adapter (and for ScienceQA the best val checkpoint)."""
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports
        return
    run = getattr(result, "train", result)
    loss = "" if run.last_loss is None else f", last loss {run.last_loss:.4f}"
    line = f"done: {run.steps} steps{loss}"
    if run.adapter_path:
        line += f"; adapter {run.adapter_path}"
    if hasattr(result, "best_val"):
        line += f"; best val accuracy {result.best_val:.4f} at step {result.best_step} -> {result.best_path}"
    print(line)


def evaluated(result) -> None:
    """The Markdown table on stdout (the run summary went to stderr)."""
    sys.stdout.write(result.table)


def format_prediction(prediction: Prediction) -> str:
    """The answer line, one line per option (probability and a bar; '*' marks the answer), then any note."""
    letters = option_letters(len(prediction.choices))
    width = max(len(choice) for choice in prediction.choices)
    lines = [f"Answer: ({prediction.letter}) {prediction.text}"]
    for i, (letter, choice, p) in enumerate(zip(letters, prediction.choices, prediction.probabilities)):
        mark = "*" if i == prediction.choice_index else " "
        lines.append(f"{mark} ({letter}) {choice:<{width}}  {p:6.1%}  {'#' * round(p * BAR_WIDTH)}")
    if prediction.note:
        lines.append(f"Note: {prediction.note}")
    return "\n".join(lines)


def demo(prediction: Prediction) -> None:
    print(format_prediction(prediction))


def converted(path) -> None:
    print(f"wrote {path}")


def pushed(url: str) -> None:
    print(f"pushed: {url}")


def main(result) -> None:
    """The test table, where its files went, the demo answer, the wall time."""
    sys.stdout.write(result.eval.table)
    if result.table is not None:
        print(f"      table: {result.out / 'table.md'}, chart: {result.out / 'table.png'}")
    if result.demo is not None:
        problem = result.demo_question
        print(f"[4/4] demo: Q: {problem.question}")
        print("      " + format_prediction(result.demo).replace("\n", "\n      "))
        print(f"      correct: ({chr(65 + problem.answer)}) {problem.choices[problem.answer]}")
    print(f"done in {result.seconds:.0f} s; outputs in {result.out}")
