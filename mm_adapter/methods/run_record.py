"""A training run's folder as the unit of work: ``run.json`` says what the run is and which adapter it chose.

Every training command writes the record when its run finishes (a resumed run rewrites it at its end, from the
metrics of all its parts): the method and its sizes, the base (spec, name or path, revision, identity), the prompt
format, the data (where it came from, the trainer's fingerprint of the encoded examples), the split sizes, the seed,
the adapters (the final one, the chosen one and what chose it) and the costs (trainable parameters counted on the
model's tensors, wall time over all parts, median s/step, peak memory, the chosen adapter's size on disk).

Wherever an adapter is taken, a run folder stands for its chosen adapter (the best val checkpoint), else its final
one. Folders written before the record existed are read by their file names: ``best.safetensors`` / ``best/``,
else ``adapter.safetensors`` / ``adapter/``. The names a record gives are checked against that list, so a record
can never point outside its folder.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mm_adapter.errors import MMAdapterError
from mm_adapter.files.atomic import atomic_write_json
from mm_adapter.files.safe_load import open_safetensors
from mm_adapter.files.text import STRING, Rule, check_fields, read_json, read_text
from mm_adapter.methods.folders import RECORD_NAME, read_record
from mm_adapter.training.metrics_log import METRICS_NAME

RUN_RECORD = "run.json"
RUN_FORMAT = "mm-adapter-run/1"
CHOSEN, FINAL = "chosen", "final"
FINAL_NAMES = ("adapter.safetensors", "adapter")  # ours (one file), another method's (a folder)
CHOSEN_NAMES = ("best.safetensors", "best")
ADAPTER_NAMES = FINAL_NAMES + CHOSEN_NAMES
_BUFFERS = ("feature_mean", "feature_std")  # a visual projection's feature statistics: stored, not trained
COST_FIELDS = ("train_s", "step_s", "peak_mb")  # the record's costs besides the counts
METRIC_FIELDS = ("elapsed_s", "step_s", "peak_mb")  # the metrics log's fields they are made from
_OBJECT = Rule(lambda value: isinstance(value, dict), "a JSON object")
_REQUIRED = {"format": STRING, "method": STRING, "adapters": _OBJECT, "costs": _OBJECT}
_OPTIONAL = {"command": STRING, "sizes": _OBJECT, "base": _OBJECT, "prompt_format": STRING, "data": _OBJECT,
             "splits": _OBJECT, "seed": Rule(lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer")}
_NUMBER = Rule(lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0,
               "a finite number >= 0")
_COUNT = Rule(lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an integer >= 0")


# ----- costs, from the metrics log the trainer wrote ---------------------------------------------------------

def metrics_rows(folder: Path) -> list[dict[str, Any]]:
    """The step rows of ``folder/metrics.jsonl`` (none when there is no log), each cost field checked: a finite
    number >= 0. A torn last line (a kill mid-write) is left out; any other bad line is one error naming it."""
    path = Path(folder) / METRICS_NAME
    if not os.path.lexists(path):
        return []
    lines = read_text(path, "metrics log").splitlines()
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            if number == len(lines):
                break
            raise MMAdapterError(f"{path}: line {number} is not JSON; fix or delete the line") from None
        if not isinstance(row, dict) or "step" not in row:
            continue  # not a step row (the log holds only these today)
        check_fields(row, f"{path}: line {number}", "metrics row", {}, {name: _NUMBER for name in METRIC_FIELDS})
        rows.append(row)
    return rows


def wall_seconds(rows: list[dict[str, Any]]) -> float | None:
    """``elapsed_s`` restarts at 0 in a resumed process: the sum of each part's last value."""
    total, last = 0.0, 0.0
    for row in rows:
        elapsed = float(row.get("elapsed_s") or 0.0)
        if elapsed < last:
            total += last
        last = elapsed
    return total + last if rows else None


def metric_costs(folder: Path) -> dict[str, float | None]:
    """Wall time (all parts), median optimizer step (validation excluded), peak memory, from the metrics log."""
    rows = metrics_rows(folder)
    steps = [float(r["step_s"]) for r in rows if r.get("step_s") is not None]
    peaks = [float(r["peak_mb"]) for r in rows if r.get("peak_mb") is not None]
    return {"train_s": wall_seconds(rows), "step_s": statistics.median(steps) if steps else None,
            "peak_mb": max(peaks) if peaks else None}


def trainable_in(adapter: Path) -> int | None:
    """The trainable count of a saved adapter, from what it holds: another method's folder records it (counted on its
    model when saved); our file's tensor shapes, read from its checked header (a visual projection's feature
    statistics are stored, not trained); None for anything else."""
    adapter = Path(adapter)
    if adapter.is_dir() and os.path.lexists(adapter / RECORD_NAME):
        return read_record(adapter).get("trainable_parameters", {}).get("total")
    if not (adapter.is_file() and adapter.suffix == ".safetensors"):
        return None
    with open_safetensors(adapter) as handle:
        return sum(math.prod(handle.get_slice(key).get_shape()) for key in handle.keys() if not key.endswith(_BUFFERS))


def disk_bytes(path: Path) -> int:
    """An adapter's size on disk: the file, or every file of the folder."""
    path = Path(path)
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ----- the record --------------------------------------------------------------------------------------------

def write_run_record(folder: str | os.PathLike, *, command: str, method: str, sizes: dict[str, Any],
                     base: dict[str, Any], prompt_format: str | None, data: dict[str, Any],
                     splits: dict[str, Any], seed: int, trainable: int, chosen: str | None = None,
                     chosen_by: dict[str, Any] | None = None) -> Path:
    """``folder/run.json`` of a finished run (its final adapter written; ``chosen``: the name of the adapter a
    validation chose, with what chose it)."""
    folder = Path(folder)
    final = next((name for name in FINAL_NAMES if os.path.lexists(folder / name)), None)
    if final is None:
        raise MMAdapterError(f"{folder}: the run wrote no final adapter ({' or '.join(FINAL_NAMES)})")
    if chosen is not None and chosen not in CHOSEN_NAMES:
        raise ValueError(f"chosen adapter {chosen!r} is not one of {CHOSEN_NAMES}")
    shipped = folder / (chosen or final)
    counted = trainable_in(shipped)  # sizes from tensors: under fsdp the live model holds only a shard
    record = {"format": RUN_FORMAT, "command": command, "method": method, "sizes": sizes, "base": base,
              "prompt_format": prompt_format, "data": data, "splits": splits, "seed": seed,
              "adapters": {FINAL: final, CHOSEN: chosen, "chosen_by": chosen_by},
              "costs": {"trainable": counted if counted is not None else trainable, **metric_costs(folder),
                        "adapter_bytes": disk_bytes(shipped)}}
    return atomic_write_json(folder / RUN_RECORD, record, indent=2)


def has_run_record(folder: Path) -> bool:
    return os.path.lexists(Path(folder) / RUN_RECORD)


def read_run_record(folder: str | os.PathLike) -> dict[str, Any]:
    """``folder/run.json``, checked field by field; anything wrong is one line naming the file and the field."""
    path = Path(folder) / RUN_RECORD
    data = read_json(path, "run record", expect=dict)
    check_fields(data, path, "run record", _REQUIRED, _OPTIONAL)
    if data["format"] != RUN_FORMAT:
        raise MMAdapterError(f"{path}: field 'format' is {data['format'][:60]!r}, expected {RUN_FORMAT!r}")
    adapters, costs = data["adapters"], data["costs"]
    names = Rule(lambda v: v in ADAPTER_NAMES, f"one of {', '.join(ADAPTER_NAMES)}")
    check_fields(adapters, path, "run record 'adapters'", {FINAL: names}, {CHOSEN: names, "chosen_by": _OBJECT})
    check_fields(costs, path, "run record 'costs'", {"trainable": _COUNT},
                 {"adapter_bytes": _COUNT, **{name: _NUMBER for name in COST_FIELDS}})
    return data


def run_adapter(folder: Path) -> tuple[Path, str, str] | None:
    """``(path, role, why)`` of the adapter a run folder stands for: its chosen one (role "chosen"), else its final
    one ("final"); None when ``folder`` is no run folder. ``why`` says what chose it, for the command to print."""
    folder = Path(folder)
    if has_run_record(folder):
        record = read_run_record(folder)
        adapters = record["adapters"]
        for role in (CHOSEN, FINAL):
            name = adapters.get(role)
            if name and os.path.lexists(folder / name):
                return folder / name, role, _why(adapters.get("chosen_by") if role == CHOSEN else None)
        raise MMAdapterError(f"{folder / RUN_RECORD}: names the adapter {adapters[FINAL]!r}, which is not in the "
                             "folder")
    for role, names in ((CHOSEN, CHOSEN_NAMES), (FINAL, FINAL_NAMES)):
        for name in names:
            if os.path.lexists(folder / name):
                return folder / name, role, ""
    return None


def _why(chosen_by: dict[str, Any] | None) -> str:
    if not chosen_by:
        return ""
    shown = ", ".join(f"{key} {value}" for key, value in chosen_by.items())
    return f" ({shown})"


def run_of(path: str | os.PathLike) -> Path | None:
    """The run folder ``path`` is, or whose adapter it is (one of :data:`ADAPTER_NAMES` in a run folder); None for
    an adapter that belongs to no run (a file or folder of another name, a hub id)."""
    path = Path(path).expanduser()
    if not os.path.lexists(path):
        return None
    if path.is_dir() and (has_run_record(path) or run_adapter_names(path)):
        return path
    if path.name in ADAPTER_NAMES:
        return path.resolve().parent
    return None


def run_adapter_names(folder: Path) -> list[str]:
    """The adapter names present in a folder that holds no adapter of its own (a run folder written before the
    record): empty for an adapter folder, a method folder or any other folder."""
    if any(os.path.lexists(folder / name) for name in ("adapter_config.json", "mm_adapter.json")):
        return []
    return [name for name in ADAPTER_NAMES if os.path.lexists(folder / name)]


def describe_taken(spec: object, path: Path, role: str, why: str, say: Callable[[str], None] | None) -> None:
    """Tell the user which adapter of a run folder a command took (the run folder was given)."""
    if say is not None:
        chose = "chosen" if role == CHOSEN else "final (the run chose none)"
        say(f"{spec}: a training run; taking its {chose} adapter {path.name}{why}")
