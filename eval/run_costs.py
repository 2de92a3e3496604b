"""What a method cost to train, read back from the records its runs wrote (for the comparison table's extra columns).

A row's eval folder records (``eval.json``, ``eval/record.py``) the adapter it evaluated as an absolute path, its
digest and its training run; the run's ``run.json`` (``methods/run_record.py``) has the costs. A run from before
the record is read from its files: ``metrics.jsonl`` (a line per optimizer step: ``step_s``, ``elapsed_s``,
``peak_mb``) and the adapter's tensors, through the same checked readers every command uses. Nothing is
recomputed, guessed or resolved against the reader's working folder: an adapter that changed since the evaluation,
or an old folder's relative ``--adapter``, gives no costs and a note saying why. A run that wrote no metrics (an
imported adapter, zero-shot) has no costs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mm_adapter.eval.record import EvalRecord, eval_record
from mm_adapter.methods.folders import adapter_digest
from mm_adapter.methods.run_record import (
    disk_bytes, has_run_record, metric_costs, read_run_record, run_of, trainable_in,
)


@dataclass(frozen=True)
class RunCosts:
    trainable: int | None
    train_s: float | None  # wall time of the whole run, validations included, summed over resumed parts
    step_s: float | None  # median optimizer step, validation excluded
    peak_mb: float | None  # the training process's peak memory (CUDA allocator on a GPU, else resident set)
    adapter_mb: float  # what the row evaluated: the adapter file, or the folder

    def cells(self) -> dict[str, str]:
        def number(value: float | None, spec: str) -> str:
            return "" if value is None else format(value, spec)

        return {"trainable": number(self.trainable, ","), "train min": number(self.train_s and self.train_s / 60, ".1f"),
                "s/step": number(self.step_s, ".2f"), "peak MB": number(self.peak_mb, ",.0f"),
                "adapter MB": number(self.adapter_mb, ",.2f")}


def record_costs(record: EvalRecord) -> tuple[RunCosts | None, str | None]:
    """``(costs, note)`` of the training run behind one eval folder: costs None when there are none to show, and
    then ``note`` says why when that is not plain (zero-shot and hub adapters have none, silently)."""
    if record.unresolved is not None:
        return None, (f"{record.folder}: its config.yaml names the adapter by the relative path {record.unresolved!r} "
                      "and not the folder it was relative to; no costs shown (evaluate again for an eval.json)")
    adapter = record.adapter
    if adapter is None:
        return None, None
    if not os.path.lexists(adapter):
        return None, f"{record.folder}: its adapter {adapter} is gone; no costs shown"
    if record.adapter_digest is not None and adapter_digest(adapter) != record.adapter_digest:
        return None, f"{record.folder}: its adapter {adapter} changed since it was evaluated; no costs shown"
    run = record.run if record.run is not None and record.run.is_dir() else run_of(adapter)
    size = disk_bytes(adapter) / 2**20
    if run is not None and has_run_record(run):
        costs = read_run_record(run)["costs"]
        return RunCosts(costs["trainable"], costs.get("train_s"), costs.get("step_s"), costs.get("peak_mb"), size), None
    found = metric_costs(run if run is not None else adapter.parent)
    return RunCosts(trainable_in(adapter), found["train_s"], found["step_s"], found["peak_mb"], size), None


def run_costs(predictions: Path) -> RunCosts | None:
    """Costs of the training run behind ``predictions`` (an eval folder's predictions.json), or None."""
    record = eval_record(Path(predictions).parent)
    return record_costs(record)[0] if record is not None else None
