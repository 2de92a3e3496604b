"""Validation-based checkpoint choice for ScienceQA training (the trainer's ``on_step_end`` hook)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from mm_adapter.errors import MMAdapterError
from mm_adapter.files.text import loads_json
from mm_adapter.eval.config import EvalConfig
from mm_adapter.eval.run import Offsets, accuracy, evaluate
from mm_adapter.model.adapter_file import save_adapter
from mm_adapter.scienceqa.data import Problem

LOG_NAME = "validation.jsonl"


def _row(line: str) -> tuple[float, int] | None:
    """(val_acc, step) of one log line, or None when it is not a row this selector wrote."""
    try:
        row = loads_json(line)
        score, step = float(row["val_acc"]), row["step"]
    except (ValueError, KeyError, TypeError):
        return None
    return (score, step) if isinstance(step, int) and 0 <= score <= 1 else None


def best_logged(log: Path) -> tuple[float, int] | None:
    """The best (val_acc, step) an earlier part of the run logged, read line by line; a torn last line (a kill
    mid-write) is ignored, any other bad line is one error naming the file and the line."""
    rows, bad = [], None
    with open(log, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            if bad is not None:
                raise MMAdapterError(f"{log}: line {bad} is not a validation row of this trainer; fix or delete "
                                     "the line to resume")
            row = _row(line)
            rows += [row] if row is not None else []
            bad = number if row is None else None
    return max(rows, key=lambda row: row[0], default=None)  # the first step that reached the best score


@dataclass
class ValidationSelector:
    """``on_step_end`` hook: every ``every`` steps, score the val problems; keep the best adapter.

    Writes ``best.safetensors`` and ``validation.jsonl`` in ``out_dir`` (rank 0 only). With images,
    ``offsets`` gives each val batch its projected features and ``extras()`` the visual tensors and
    metadata that best.safetensors must carry (as the trainer's export does for adapter.safetensors).
    Another ``--method`` gives ``save(model, path, metadata)``, which writes its folder ``best_name`` (``best/``).
    ``resume`` continues the log of the run's earlier part; a fresh run drops a log left by a run that
    died before its first checkpoint (its best score is not this run's).
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
    save: Callable[[nn.Module, Path, dict[str, str]], object] | None = None
    best_name: str = "best.safetensors"
    resume: bool = False
    best: float = -1.0
    best_step: int = 0

    def __post_init__(self) -> None:
        """A resumed run continues from the best score its earlier part logged, so best.safetensors only improves."""
        log = Path(self.out_dir) / LOG_NAME
        if not self.resume:
            if self.is_main:
                log.unlink(missing_ok=True)
        elif log.is_file():
            self.best, self.best_step = best_logged(log) or (self.best, self.best_step)

    def __call__(self, step: int, epoch: float, model) -> dict | None:
        if step % self.every and step != self.total_steps:
            return None
        val = accuracy(evaluate(model, self.tokenizer, self.problems, self.config, self.offsets), self.problems)
        if self.is_main:
            if val > self.best:
                self.best, self.best_step = val, step
                self._save_best(model, {"val_accuracy": f"{val:.4f}", "step": str(step)})
            with open(self.out_dir / LOG_NAME, "a") as handle:
                handle.write(json.dumps({"step": step, "epoch": round(epoch, 4), "val_acc": val}) + "\n")
        return {"val_acc": val}

    def _save_best(self, model: nn.Module, metadata: dict[str, str]) -> None:
        """Our adapter file with its extras, or the method's own ``save`` (a folder), recording val and step."""
        path = self.out_dir / self.best_name
        if self.save is not None:
            self.save(model, path, metadata)
            return
        tensors, extra = self.extras() if self.extras else ({}, {})
        save_adapter(model, path, tensors, extra | metadata)
