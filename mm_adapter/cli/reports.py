"""How the command prints a job's result (the jobs return objects; printing is the command's business)."""

from __future__ import annotations

import os
import sys

from mm_adapter.demo.predictor import Prediction
from mm_adapter.scienceqa.prompts import option_letters

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


def ablated(result) -> None:
    """The ablation table, where its files went, and which variants this call trained."""
    sys.stdout.write(result.markdown)
    print(f"table: {result.out / 'table.md'}, {result.out / 'table.json'}; chart: {result.out / 'table.png'}")
    print(f"done in {result.seconds:.0f} s: {len(result.trained)} variant(s) trained, {len(result.finished)} "
          "finished earlier")


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


def generated(result) -> None:
    sizes = ", ".join(f"{split} {count}" for split, count in result.sizes.items())
    print(f"wrote {sum(result.sizes.values())} problems ({sizes}) to {result.out}")


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


def planned(result) -> None:
    """The plan of a recipe: counts, data and schedule, each term of one GPU's memory, and the GPUs it takes."""
    def size(n: float) -> str:
        return f"{n / 2**30:8.2f} GiB" if n >= 2**29 else f"{n / 2**20:8.1f} MiB"

    counts, run, data, train = result.counts, result.run, result.data, result.recipe.config
    print(f"recipe: {result.recipe.path} (mm-adapter {result.recipe.command})")
    print(f"base: {train.model.base}: {result.architecture.source}; no weights read")
    print(f"adapter: {train.adapter.adapter_len} prompts x top {train.adapter.adapter_layers} of {result.layers} layers, "
          f"gates per {train.adapter.gate_granularity}")
    visual = f" + visual projection {counts.visual:,}" if counts.visual else ""
    print(f"parameters: trainable {counts.trainable:,} (adapter {counts.adapter:,}{visual}), frozen {counts.frozen:,}")
    tokens = ("unknown" if data.tokens is None else f"{data.tokens:,} (tokenised by the base's tokenizer)"
              if data.exact else f"<= {data.tokens:,} (records x max_seq_len {run.seq_len})")
    records = "unknown" if data.records is None else f"{data.records:,}"
    print(f"data: {data.source}: {records} records ({data.how}); tokens per epoch {tokens}")
    steps = "" if result.steps_per_epoch is None else (f", {result.steps_per_epoch:,} steps per epoch, "
                                                      f"{result.total_steps:,} over {train.train.epochs} epoch(s)")
    gpus = f"{result.gpus} GPU{'s' if result.gpus != 1 else ''}"
    print(f"schedule on {gpus}: {train.train.batch_size} per GPU x accum {train.train.accum_steps} = "
          f"{result.effective_batch} per step, lr {result.lr:.3g}{steps}")
    chosen = train.train.strategy
    strategy = result.strategy if chosen == result.strategy else f"{chosen} (-> {result.strategy} on {gpus})"
    print(f"strategy {strategy}, activation checkpointing {'on' if run.checkpointing else 'off'}; weights "
          f"{run.weight_dtype or 'as stored'}, {'bf16 autocast' if run.autocast else 'no autocast'}")
    print(f"memory per GPU on {gpus} (an estimate; formulas in mm_adapter/training/memory_plan.py):")
    for item in result.memory:
        print(f"  {item.name:<18}{size(item.bytes)}  {item.note}")
    fits = "fits" if result.total_bytes <= result.gpu_memory_gib * 2**30 else "does NOT fit"
    print(f"  {'total':<18}{size(result.total_bytes)}  {fits} in {result.gpu_memory_gib:g} GiB")
    needed, none = f"GPUs of {result.gpu_memory_gib:g} GiB needed:", "none (what each GPU holds whole exceeds it)"
    if result.strategy == "fsdp":
        print(f"{needed} {result.needed or none} (fsdp shards the weights)")
    elif result.needed:
        print(f"{needed} 1 per replica ({result.strategy}: each GPU holds the whole model; more GPUs add throughput)")
    else:
        print(f"{needed} one does not hold it under {result.strategy}; with strategy fsdp: "
              f"{result.needed_sharded or none}")
