"""Timing helpers shared by the benchmark scripts: warm-up, median of repetitions, JSON + Markdown output."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable


def median_seconds(step: Callable[[], object], repeats: int = 5, warmup: int = 2) -> float:
    """Median wall time of ``step`` over ``repeats`` runs after ``warmup`` untimed runs."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def emit(row: dict, columns: list[str]) -> None:
    """Print one JSON line and one Markdown table row for a benchmark case."""
    print(json.dumps(row, sort_keys=True))
    cells = [f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c]) for c in columns]
    print("| " + " | ".join(cells) + " |")
