"""The run record every training command writes into its folder when the run finishes (``methods/run_record.py``
says what the record holds and how a run folder is read back)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mm_adapter.methods.attach import Tuned
from mm_adapter.model.adapter import adapter_config, has_adapter
from mm_adapter.training.batches import Example
from mm_adapter.methods.run_record import write_run_record
from mm_adapter.training.trainer import data_fingerprint


def data_source(spec: str | None) -> str | None:
    """A local file or folder as an absolute path (the record must mean the same file from any folder); a hub id
    as given."""
    if spec is None:
        return None
    return str(Path(spec).expanduser().resolve()) if os.path.lexists(Path(spec).expanduser()) else spec


def record_run(out: Path, command: str, tuned: Tuned, *, prompt_format: str | None, source: dict[str, str | None],
               examples: Sequence[Example], splits: dict[str, Any], seed: int, chosen: str | None = None,
               chosen_by: dict[str, Any] | None = None) -> Path:
    """``out/run.json`` for a run trained by ``tuned`` on ``examples`` (the trainer's data fingerprint), read from
    ``source`` (flag -> file, folder or hub id)."""
    sizes = dict(tuned.sizes)
    if has_adapter(tuned.model):
        sizes["adapter"] = adapter_config(tuned.model).to_dict()
    base = {**tuned.source, "identity": dataclasses.asdict(tuned.base)}
    data = {"source": {flag: data_source(spec) for flag, spec in source.items() if spec is not None},
            "fingerprint": data_fingerprint(examples)}
    return write_run_record(out, command=command, method=tuned.method, sizes=sizes, base=base,
                            prompt_format=prompt_format, data=data, splits=splits, seed=seed, trainable=tuned.trainable,
                            chosen=chosen, chosen_by=chosen_by)
