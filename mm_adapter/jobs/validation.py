"""Validation-based checkpoint choice for ScienceQA training (the trainer's ``on_step_end`` hook)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..checkpoint import save_adapter
from ..eval.config import EvalConfig
from ..eval.run import Offsets, accuracy, evaluate
from ..scienceqa.data import Problem


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
