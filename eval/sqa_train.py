"""ScienceQA as training examples for the shared trainer, and validation-based checkpoint choice.

A problem becomes ``prompt + target`` tokenised as ONE string (exactly how score mode reads the
answer letter), with labels only on the target's tokens (found through the tokenizer's character
offsets, so a token that straddles the prompt/target boundary is handled).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from eval.run import EvalConfig, Offsets, accuracy, evaluate
from mm_adapter.checkpoint import read_adapter, save_adapter
from mm_adapter.errors import MMAdapterError
from mm_adapter.train_data import IGNORE_INDEX, Example
from scienceqa.data import Problem
from scienceqa.prompts import PromptFormat, build_prompt

PROMPT_FORMAT_KEY = "prompt_format"  # adapter-file metadata: the format the adapter was trained on


def format_metadata(fmt: str | PromptFormat) -> dict[str, str]:
    return {PROMPT_FORMAT_KEY: PromptFormat.parse(fmt).value}


def resolve_format(requested: str | None, adapter: str | Path | None, warn: Callable[[str], None] = print) -> str:
    """The prompt format to answer in: the one asked for, else the one the adapter file records, else QCM-A.
    Asking for another format than the adapter was trained on is allowed (a study) but said."""
    recorded = read_adapter(adapter).extra_metadata.get(PROMPT_FORMAT_KEY) if adapter else None
    chosen = PromptFormat.parse(requested or recorded or PromptFormat.QCM_A).value
    if recorded and chosen != recorded:
        warn(f"note: {Path(adapter).name} was trained on {recorded}; answering in {chosen} as asked")
    return chosen


def encode_problem(tokenizer, problem: Problem, fmt: str = "QCM-A", use_caption: bool = True,
                   max_seq_len: int = 512) -> Example | None:
    """Token ids and labels (target only) of one problem; ``None`` when truncation would cut the target."""
    pair = build_prompt(problem, fmt, use_caption=use_caption)
    text = pair.prompt + pair.target
    encoded = tokenizer(text, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    boundary = len(pair.prompt)
    labels = [token if start >= boundary or end > boundary else IGNORE_INDEX
              for token, (start, end) in zip(ids, offsets)]
    if tokenizer.eos_token_id is not None:
        ids, labels = ids + [tokenizer.eos_token_id], labels + [tokenizer.eos_token_id]
    if len(ids) > max_seq_len:
        return None
    return {"input_ids": ids, "labels": labels}


def encode_problems(tokenizer, problems: Sequence[Problem], fmt: str = "QCM-A", use_caption: bool = True,
                    max_seq_len: int = 512) -> tuple[list[Example], list[Problem]]:
    """Examples and the problems they came from (problems longer than ``max_seq_len`` are left out)."""
    kept = [(encode_problem(tokenizer, p, fmt, use_caption, max_seq_len), p) for p in problems]
    kept = [(example, problem) for example, problem in kept if example is not None]
    if not kept:
        raise MMAdapterError(f"no problem fits max_seq_len={max_seq_len}")
    return [e for e, _ in kept], [p for _, p in kept]


@dataclass
class ValidationSelector:
    """``on_step_end`` hook: every ``every`` steps, score the val problems; keep the best adapter.

    Writes ``best.safetensors`` and ``validation.jsonl`` in ``out_dir`` (rank 0 only). With images,
    ``offsets`` gives each val batch its projected features and ``extras()`` the visual tensors and
    metadata that best.safetensors must carry (as the trainer's export does for adapter.safetensors).
    """

    tokenizer: object
    problems: Sequence[Problem]
    out_dir: Path
    every: int
    total_steps: int
    config: EvalConfig = field(default_factory=EvalConfig)
    is_main: bool = True
    offsets: Offsets | None = None
    extras: Callable[[], tuple[dict, dict]] | None = None
    best: float = -1.0
    best_step: int = 0

    def __post_init__(self) -> None:
        """A resumed run continues from the best score its earlier part logged, so best.safetensors only improves."""
        log = Path(self.out_dir) / "validation.jsonl"
        if log.is_file():
            rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
            if rows:
                top = max(rows, key=lambda row: row["val_acc"])
                self.best, self.best_step = top["val_acc"], top["step"]

    def __call__(self, step: int, epoch: float, model) -> dict | None:
        if step % self.every and step != self.total_steps:
            return None
        val = accuracy(evaluate(model, self.tokenizer, self.problems, self.config, self.offsets), self.problems)
        if self.is_main:
            if val > self.best:
                self.best, self.best_step = val, step
                tensors, metadata = self.extras() if self.extras else ({}, {})
                save_adapter(model, self.out_dir / "best.safetensors", tensors,
                             metadata | {"val_accuracy": f"{val:.4f}", "step": str(step)})
            with open(self.out_dir / "validation.jsonl", "a") as handle:
                handle.write(json.dumps({"step": step, "epoch": round(epoch, 4), "val_acc": val}) + "\n")
        return {"val_acc": val}
