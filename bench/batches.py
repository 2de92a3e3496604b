"""Real training batches for the benchmarks: ScienceQA (short answer after a long prompt) and Alpaca.

Timings on random tokens with a loss on every position hide what matters for an adapter: a
ScienceQA example carries a label on ~6 of ~200 tokens, an Alpaca one on roughly half. So the
step benchmarks run on batches the trainer itself would build: real records, the projects'
encoders (labels only on the answer / response), length-grouped micro-batches, dynamic padding.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mm_adapter.training.batches import IGNORE_INDEX, PadCollator, epoch_batches

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SCIENCEQA_DIR = SHARED / "scienceqa"
ALPACA_FILE = SHARED / "alpaca" / "alpaca_5000.json"
SHAPES = ("sqa", "alpaca", "random")


def scienceqa_examples(tokenizer, split: str = "train", root: Path = SCIENCEQA_DIR) -> list[dict]:
    """QCM->A examples of a ScienceQA split (captions as context), labels on the answer only."""
    from mm_adapter.data.problems import encode_problems
    from mm_adapter.scienceqa.data import read_official

    problems, _ = read_official(root, split)
    examples, _ = encode_problems(tokenizer, problems)
    return examples


def alpaca_examples(tokenizer, path: Path = ALPACA_FILE, max_seq_len: int = 512) -> list[dict]:
    """Alpaca records with the paper's templates, labels on the response + EOS only."""
    from mm_adapter.data.alpaca import encode_alpaca, read_alpaca

    examples, _ = encode_alpaca(tokenizer, read_alpaca(path, skip_bad=True).records, max_seq_len)
    return examples


def random_examples(vocab_size: int, count: int, seq: int, seed: int = 0) -> list[dict]:
    """Random tokens with a label on every position (the old step_vs_peft setting)."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, vocab_size, (count, seq), generator=generator).tolist()
    return [{"input_ids": row, "labels": row} for row in rows]


def trainer_batches(examples: list[dict], pad_id: int, batch_size: int, count: int,
                    seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """The first ``count`` micro-batches of the trainer's epoch-0 plan (length-grouped, dynamically padded)."""
    lengths = [len(e["input_ids"]) for e in examples]
    plan = epoch_batches(lengths, batch_size, seed, epoch=0)[:count]
    collate = PadCollator(pad_id)
    return [collate([examples[i] for i in indices]) for indices in plan]


def load_batches(shape: str, tokenizer, vocab_size: int, batch_size: int, count: int,
                 seq: int = 256, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """``count`` batches of one shape: ``sqa``, ``alpaca`` (real data under ../shared) or ``random``."""
    if shape == "sqa":
        examples = scienceqa_examples(tokenizer)
    elif shape == "alpaca":
        examples = alpaca_examples(tokenizer)
    elif shape == "random":
        examples = random_examples(vocab_size, batch_size * count, seq, seed)
    else:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    pad_id = tokenizer.pad_token_id if tokenizer is not None and tokenizer.pad_token_id is not None else 0
    return trainer_batches(examples, pad_id, batch_size, count, seed)


def describe(batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Mean padded width, real tokens and labelled positions per batch (what the step actually computes)."""
    n = len(batches)
    return {"width": sum(b["input_ids"].shape[1] for b in batches) / n,
            "real_tokens": sum(int(b["attention_mask"].sum()) for b in batches) / n,
            "labelled": sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches) / n}
