"""Experiment (prints figures; not a test): cloze scoring and cloze training on real ScienceQA.

Letter scoring ("The answer is X") asks a 135M model to bind an option to its letter, which it
cannot do zero-shot (below chance). Cloze scoring compares the mean log-probability of each
option's *text* after "The answer is"; cloze training supervises " <correct option text>." + EOS.
Run: .venv/bin/python -m bench.sqa_cloze --out runs/cloze [--epochs 1 --lr 5e-3 --threads 2]
Prints val accuracy of the base model and of the cloze-trained adapter, both scored by cloze.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from mm_adapter import AdapterConfig, attach_adapter, load_base
from mm_adapter.train import TrainConfig, train
from mm_adapter.train_data import IGNORE_INDEX, PadCollator
from scienceqa.data import Problem, read_official
from scienceqa.prompts import build_prompt

PREFIX = " The answer is"


def prefix_ids(tokenizer, problem: Problem) -> list[int]:
    return tokenizer(build_prompt(problem, "QCM-A", use_caption=True).prompt + PREFIX).input_ids


def option_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(f" {text}.", add_special_tokens=False).input_ids


def cloze_example(tokenizer, problem: Problem) -> dict:
    prompt = prefix_ids(tokenizer, problem)
    target = option_ids(tokenizer, problem.choices[problem.answer]) + [tokenizer.eos_token_id]
    return {"input_ids": prompt + target, "labels": [IGNORE_INDEX] * len(prompt) + target}


@torch.no_grad()
def cloze_choice(model, tokenizer, problem: Problem) -> int:
    """The option whose text has the highest mean token log-probability after the prefix (one batch per problem)."""
    prompt = prefix_ids(tokenizer, problem)
    sequences = [prompt + option_ids(tokenizer, choice) for choice in problem.choices]
    width = max(map(len, sequences))
    ids = torch.full((len(sequences), width), tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    for row, sequence in enumerate(sequences):
        ids[row, :len(sequence)], mask[row, :len(sequence)] = torch.tensor(sequence), 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        log_probs = model(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)
    scores = []
    for row, sequence in enumerate(sequences):
        positions = torch.arange(len(prompt) - 1, len(sequence) - 1)
        scores.append(log_probs[row, positions, torch.tensor(sequence[len(prompt):])].mean().item())
    return max(range(len(scores)), key=scores.__getitem__)


def cloze_accuracy(model, tokenizer, problems: list[Problem]) -> float:
    return sum(cloze_choice(model, tokenizer, p) == p.answer for p in problems) / len(problems)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/scienceqa")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tokenizer = load_base("smollm2-135m", dtype="bf16")
    train_set = read_official(args.data, split="train")[0]
    val_set = read_official(args.data, split="val")[0]
    start = time.perf_counter()
    print(json.dumps({"run": "zero-shot cloze", "val_acc": round(cloze_accuracy(model, tokenizer, val_set), 4),
                      "seconds": round(time.perf_counter() - start)}), flush=True)
    torch.manual_seed(0)
    attach_adapter(model, AdapterConfig(prompt_init="norm_scaled"))
    config = TrainConfig(out_dir=str(args.out), epochs=args.epochs, warmup_epochs=0.3, batch_size=8, lr=args.lr,
                         progress=False, checkpoint_every=10_000)
    start = time.perf_counter()
    train(model, [cloze_example(tokenizer, p) for p in train_set], config, PadCollator(tokenizer.pad_token_id))
    trained_s = time.perf_counter() - start
    print(json.dumps({"run": f"adapter, cloze-trained {args.epochs} epoch(s), lr {args.lr}",
                      "val_acc": round(cloze_accuracy(model, tokenizer, val_set), 4),
                      "train_seconds": round(trained_s)}), flush=True)


if __name__ == "__main__":
    main()
