"""Training metrics: per-step JSONL (rank 0 only) and a loss-curve PNG drawn from it."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from mm_adapter.files.atomic import atomic_path, atomic_write_text
from mm_adapter.files.text import read_text

METRICS_NAME, PLOT_NAME = "metrics.jsonl", "loss.png"


def _record(line: str) -> dict[str, Any]:
    """One metrics line, or {} for a torn or foreign one (a kill mid-write leaves at most the last line torn)."""
    try:
        record = json.loads(line)  # our own log: a diverged run's NaN loss is a record, kept as written
    except (ValueError, RecursionError):  # torn, or a foreign line nested too deeply
        return {}
    return record if isinstance(record, dict) else {}


def _step_of(line: str) -> float:
    step = _record(line).get("step")
    return step if isinstance(step, (int, float)) else math.inf


class MetricsLog:
    """Per-step metrics as JSONL (rank 0 only) and a loss-curve PNG drawn from it."""

    def __init__(self, out_dir: Path, resume_step: int | None):
        self.path, self.plot_path = out_dir / METRICS_NAME, out_dir / PLOT_NAME
        if resume_step is None:
            self.path.unlink(missing_ok=True)  # left by a run that died before its first checkpoint
        elif self.path.exists():  # drop steps the killed run did after its checkpoint (and a torn last line)
            kept = [line for line in read_text(self.path, "metrics log").splitlines() if _step_of(line) <= resume_step]
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        self.handle = open(self.path, "a")

    def write(self, record: dict[str, Any]) -> None:
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()

    def plot(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        records = [_record(line) for line in read_text(self.path, "metrics log").splitlines()]
        points = [(r["step"], r["loss"]) for r in records if "step" in r and "loss" in r]
        if not points:
            return
        figure, axis = plt.subplots(figsize=(7, 4))
        steps, losses = zip(*points)
        axis.plot(steps, losses, lw=0.8, alpha=0.5, label="loss")
        window = max(1, len(losses) // 30)
        if window > 1:
            smooth = [sum(losses[max(0, i - window + 1):i + 1]) / len(losses[max(0, i - window + 1):i + 1])
                      for i in range(len(losses))]
            axis.plot(steps, smooth, lw=1.5, label=f"mean of {window}")
        axis.set(xlabel="optimizer step", ylabel="train loss (per labelled token)", title="training loss")
        axis.legend()
        figure.tight_layout()
        with atomic_path(self.plot_path) as tmp:
            figure.savefig(tmp, dpi=100)
        plt.close(figure)

    def close(self) -> None:
        self.handle.close()
