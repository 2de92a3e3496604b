"""The methods compared and the learning rates each is searched over: the default grids, and the grids OUT records
(OUT/grids.json), so that a grid widened once by ``--grid`` stays the grid for every later call and for the other
worker, and is never narrowed."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mm_adapter.files.atomic import atomic_write_json
from mm_adapter.methods.config import TuningConfig


@dataclass(frozen=True)
class Method:
    name: str  # the run's name in folders and tables
    tuning: TuningConfig | None  # None: zero-shot, the base evaluated with no training
    lrs: tuple[float, ...]  # the search grid, ascending


# At least three points each, so the chosen value can be interior (issue 25). Parameter-efficient methods share one
# grid around ours (5e-3 and 1e-2 were issue 14's, where 1e-2 won at the top edge); LoRA's update is a product of two
# matrices and full fine-tuning moves every weight, so theirs are the usual decades lower.
GRIDS = {"prompt": (5e-3, 1e-2, 2e-2, 4e-2), "lora": (5e-4, 2e-3, 5e-3, 1e-2), "full": (1e-5, 5e-5, 1e-4)}
ZERO_SHOT = "zero-shot"
METHODS = (
    Method(ZERO_SHOT, None, ()),
    Method("llama-adapter", TuningConfig(), GRIDS["prompt"]),
    Method("llama-adapter-v2", TuningConfig(method="llama-adapter-v2"), GRIDS["prompt"]),
    Method("peft-adaption-prompt", TuningConfig(method="peft-adaption-prompt"), GRIDS["prompt"]),
    Method("lora", TuningConfig(method="lora"), GRIDS["lora"]),
    Method("lora-r16-all", TuningConfig(method="lora", lora_rank=16, lora_targets="all-linear"), GRIDS["lora"]),
    Method("prompt-tuning", TuningConfig(method="prompt-tuning"), GRIDS["prompt"]),
    Method("prefix-tuning", TuningConfig(method="prefix-tuning"), GRIDS["prompt"]),
    Method("full", TuningConfig(method="full"), GRIDS["full"]),
)
GRID_FILE = "grids.json"  # OUT's searched grid per method: what `--grid` widened stays the grid for every worker


def recorded_grids(out: Path) -> dict[str, list[float]]:
    path = out / GRID_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def with_grids(out: Path, chosen: list[Method], given: tuple[float, ...] | None,
               records: Sequence[Path] = ()) -> list[Method]:
    """``chosen`` with each trained method's grid: `--grid` (else the one OUT and its records record, else GRIDS),
    joined with the recorded ones, so a grid can be widened and never narrowed by a later call or the other worker."""
    recorded: dict[str, list[float]] = {}
    for root in (out, *records):
        for name, lrs in recorded_grids(root).items():
            recorded[name] = sorted(set(recorded.get(name, ())) | set(lrs))
    return [dataclasses.replace(m, lrs=tuple(sorted(set(given or recorded.get(m.name) or m.lrs)
                                                    | set(recorded.get(m.name, ())))))
            if m.tuning else m for m in chosen]


def record_grids(out: Path, methods: list[Method]) -> None:
    """OUT/grids.json gets this call's grids (joined with those recorded), before anything is trained."""
    recorded = recorded_grids(out)
    grids = recorded | {m.name: sorted(set(m.lrs) | set(recorded.get(m.name, ()))) for m in methods if m.tuning}
    if grids != recorded:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / GRID_FILE, grids, indent=1)

