"""What a method cost to train, read back from the files its runs wrote (for the comparison table's extra columns).

An evaluation folder's config.yaml names the adapter it evaluated; the adapter lies in (or is) the training
run's folder, whose metrics.jsonl has a line per optimizer step (``step_s``, ``elapsed_s``, ``peak_mb``).
Nothing is recomputed: a run that wrote no metrics (an imported adapter, zero-shot) has no costs.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from mm_adapter.files.text import read_text
from mm_adapter.methods.folders import RECORD_NAME, read_record


@dataclass(frozen=True)
class RunCosts:
    trainable: int | None
    train_s: float | None  # wall time of the whole run, validations included, summed over resumed parts
    step_s: float | None  # median optimizer step, validation excluded
    peak_mb: float | None  # the training process's peak memory (CUDA allocator on a GPU, else resident set)
    adapter_mb: float  # what the run ships: the adapter file, or the folder

    def cells(self) -> dict[str, str]:
        def number(value: float | None, spec: str) -> str:
            return "" if value is None else format(value, spec)

        return {"trainable": number(self.trainable, ","), "train min": number(self.train_s and self.train_s / 60, ".1f"),
                "s/step": number(self.step_s, ".2f"), "peak MB": number(self.peak_mb, ",.0f"),
                "adapter MB": number(self.adapter_mb, ",.2f")}


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _metrics(folder: Path) -> list[dict]:
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in read_text(path, "metrics log").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    return rows


def _wall_seconds(rows: list[dict]) -> float | None:
    """elapsed_s restarts at 0 in a resumed process: sum each part's last value."""
    total, last = 0.0, 0.0
    for row in rows:
        elapsed = float(row.get("elapsed_s", 0.0))
        if elapsed < last:
            total += last
        last = elapsed
    return total + last if rows else None


def _trainable(adapter: Path) -> int | None:
    """The adapter's trainable count: another method's folder records it; our file's tensors are counted."""
    if adapter.is_dir() and (adapter / RECORD_NAME).is_file():
        return read_record(adapter)["trainable_parameters"].get("total")
    if adapter.is_file() and adapter.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(adapter), framework="np") as handle:
            return sum(_numel(handle.get_slice(key).get_shape()) for key in handle.keys()
                       if not key.endswith(("feature_mean", "feature_std")))  # buffers, not trained
    return None


def _numel(shape: list[int]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def run_costs(predictions: Path) -> RunCosts | None:
    """Costs of the training run behind ``predictions`` (an eval folder's predictions.json), or None."""
    config = predictions.parent / "config.yaml"
    if not config.is_file():
        return None
    import yaml

    adapter_spec = (yaml.safe_load(read_text(config, "eval config")) or {}).get("adapter")
    adapter = Path(adapter_spec) if adapter_spec else None
    if adapter is None or not adapter.exists():
        return None
    rows = _metrics(adapter.parent)
    steps = [float(r["step_s"]) for r in rows if "step_s" in r]
    peaks = [float(r["peak_mb"]) for r in rows if "peak_mb" in r]
    return RunCosts(_trainable(adapter), _wall_seconds(rows), statistics.median(steps) if steps else None,
                    max(peaks) if peaks else None, _size(adapter) / 2**20)
