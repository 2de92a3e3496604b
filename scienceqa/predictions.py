"""Prediction files in the official shape: {"results": {pid: choice_index}, "outputs"?, "method"?}.

Convention (documented, tested): a choice index of -1 means "no answer could be read" and counts
as wrong; pids of the split that a file does not cover are reported, not scored; a table is
computed over the pids the file covers. Anything else malformed is a ScienceQAError.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from mm_adapter.errors import fail
from mm_adapter.scienceqa.data import Problem, read_benchmark_json

NO_ANSWER = -1


@dataclass(frozen=True)
class Predictions:
    """One method's predicted choice index per pid. `name`: the file's "method", else its stem."""

    name: str
    results: dict[str, int]
    outputs: dict[str, str] = field(default_factory=dict, repr=False)
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.results)


def load_predictions(path: str | Path) -> Predictions:
    """Read a predictions file, checking its shape (not yet its pids: see `check_predictions`)."""
    path = Path(path)
    raw = read_benchmark_json(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("results"), dict):
        raise fail(path, 'must be a JSON object with "results": {pid: choice_index}')
    for pid, value in raw["results"].items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail(path, f"prediction must be an int choice index, got {value!r}", pid, "results")
    outputs = raw.get("outputs") or {}
    if not isinstance(outputs, dict):
        raise fail(path, "must be an object of pid -> generated text", field="outputs")
    method = raw.get("method")
    name = method if isinstance(method, str) and method.strip() else path.stem
    return Predictions(name=name, results=dict(raw["results"]), outputs=outputs, path=path)


def check_predictions(predictions: Predictions, problems: Mapping[str, Problem]) -> list[str]:
    """Validate pids and indices against the problems; return the pids of the predicted splits
    that the file does not cover (reported by callers, not an error)."""
    source = predictions.path or predictions.name
    for pid, index in predictions.results.items():
        if pid not in problems:
            raise fail(source, "unknown pid (not in the problems file)", pid, "results")
        n = len(problems[pid].choices)
        if index != NO_ANSWER and not 0 <= index < n:
            raise fail(source, f"choice index {index} out of range for {n} choices (or -1 for none)", pid, "results")
    splits = {problems[pid].split for pid in predictions.results}
    return [pid for pid, p in problems.items() if p.split in splits and pid not in predictions.results]


def make_predictions(name: str, results: Mapping[str, int], outputs: Mapping[str, str] | None = None) -> dict:
    """The official JSON object for a run (what an eval runner writes)."""
    return {"method": name, "results": dict(results), "outputs": dict(outputs or {})}
