"""The paper's ablations on ScienceQA as one job (``mm-adapter ablate scienceqa``).

The training settings of :class:`AblateConfig` are the baseline. Each ablation (an :class:`Axis`) varies one
setting over the values listed: gate init (zero / random), adapter layers, adapter length, gate activation and,
with images, images vs blanked images (every image one mid-gray picture, ``eval.features.blank_image``), and for
video clips the frames' order (ordered / shuffled) and their number (1: the middle frame alone). Every
variant is a whole ``train scienceqa`` run in ``OUT/<variant>/``, scored by its best val accuracy; a variant equal
to the baseline is the baseline, trained once in ``OUT/baseline``. OUT gets table.md, table.json and table.png
(one bar per variant, grouped by ablation, the baseline marked).

Rerunning continues: a variant whose folder holds its final adapter is finished, and its best val score is read
from its validation log instead of training again; one with checkpoints but no final adapter was stopped and
resumes from its last checkpoint (the trainer's resume, so it ends as an unstopped run would); any other starts
afresh. ``OUT/config.yaml`` records the settings, and a rerun into OUT with other training settings is refused:
its finished variants would be skipped, yet not comparable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mm_adapter.errors import MMAdapterError
from mm_adapter.files.atomic import atomic_path, atomic_write_text
from mm_adapter.files.config_file import read_config_file
from mm_adapter.files.output_folder import CONFIG_NAME, Output, config_dict, outputs_in, write_config
from mm_adapter.jobs.configs.ablation import NOTHING_TO_ABLATE, AblateConfig
from mm_adapter.jobs.configs.training import TrainScienceQAConfig
from mm_adapter.jobs.runtime import job_folder, source_inputs
from mm_adapter.jobs.train_scienceqa import scienceqa_outputs, train_scienceqa
from mm_adapter.jobs.validation import LOG_NAME, best_logged
from mm_adapter.training.checkpoints.format import checkpoint_dirs
from mm_adapter.training.config import TrainConfig
from mm_adapter.training.trainer import ADAPTER_NAME, CHECKPOINTS

COMMAND = "ablate scienceqa"
TABLE_MD, TABLE_JSON, TABLE_PNG = "table.md", "table.json", "table.png"
BASELINE = "baseline"
# Settings a rerun may change: they change no variant's result (the axes only add or drop variants; the trainer's
# NON_IDENTITY settings may change on a resume too).
RUN_ONLY = ({"command", "out", "model.threads", "model.device", "gate_inits", "layers", "lengths", "activations",
             "blanked", "frame_orders", "frame_counts"} | {f"train.{name}" for name in TrainConfig.NON_IDENTITY})


@dataclass(frozen=True)
class Axis:
    """One ablation: the config field listing its values, the setting each variant changes, the folder prefix."""

    title: str
    values: str
    setting: str
    short: str


AXES = (
    Axis("gate init", "gate_inits", "adapter.gate_init", "gate"),
    Axis("adapter layers", "layers", "adapter.adapter_layers", "layers"),
    Axis("adapter len", "lengths", "adapter.adapter_len", "len"),
    Axis("gate activation", "activations", "adapter.gate_activation", "activation"),
    Axis("images", "blanked", "blank_images", "images"),
    Axis("frame order", "frame_orders", "visual.frame_order", "order"),
    Axis("frames", "frame_counts", "visual.frames", "frames"),
)


@dataclass(frozen=True)
class Entry:
    """One bar of the chart: a value of an axis and the training run that has it."""

    axis: Axis
    value: Any
    variant: str  # the run's folder under OUT
    config: TrainScienceQAConfig

    @property
    def label(self) -> str:
        return value_label(self.axis, self.value)


def value_label(axis: Axis, value: Any) -> str:
    """How a value reads in the table, the chart and the variant's folder name."""
    if axis.setting == "blank_images":
        return "blanked" if value else "images"
    return str(value)


@dataclass(frozen=True)
class Row:
    """One row of the table (and of table.json)."""

    ablation: str
    setting: str
    value: Any
    label: str
    variant: str
    baseline: bool
    val_acc: float
    best_step: int


@dataclass
class AblateResult:
    out: Path
    rows: list[Row]
    trained: list[str]  # variants this call trained or resumed
    finished: list[str]  # variants already finished before it
    markdown: str
    seconds: float


def _say(line: str) -> None:
    """Progress goes to stderr: stdout is the table (the command's report)."""
    print(line, file=sys.stderr, flush=True)


def baseline_config(config: AblateConfig) -> TrainScienceQAConfig:
    """The ablation's training settings as the training job's config (the axes left out)."""
    return TrainScienceQAConfig(**{f.name: getattr(config, f.name) for f in dataclasses.fields(TrainScienceQAConfig)})


def setting(config: Any, path: str) -> Any:
    """The value at a dotted path such as ``adapter.adapter_layers``."""
    for part in path.split("."):
        config = getattr(config, part)
    return config


def with_setting(config: Any, path: str, value: Any) -> Any:
    """A copy of ``config`` with the dotted ``path`` set to ``value`` (nested configs copied, never changed)."""
    head, _, rest = path.partition(".")
    return dataclasses.replace(config, **{head: with_setting(getattr(config, head), rest, value) if rest else value})


def axis_values(config: AblateConfig, axis: Axis) -> list[Any]:
    """The values an axis compares, in the order given, each once; the images axis is a switch (needs images)."""
    if axis.setting == "blank_images":
        return [False, True] if config.images and config.blanked else []
    return list(dict.fromkeys(getattr(config, axis.values)))


def planned_runs(config: AblateConfig) -> list[list[Entry]]:
    """Per ablation, its entries; each group holds the baseline (first when its value is not listed)."""
    base = baseline_config(config)
    groups = []
    for axis in AXES:
        values = axis_values(config, axis)
        if not values:
            continue
        current = setting(base, axis.setting)
        values = values if current in values else [current, *values]
        names = [BASELINE if value == current else f"{axis.short}-{value_label(axis, value)}" for value in values]
        groups.append([Entry(axis, value, name, with_setting(base, axis.setting, value))
                       for value, name in zip(values, names)])
    if not groups:
        raise MMAdapterError(NOTHING_TO_ABLATE)  # a config changed after it was built (AblateConfig refuses it)
    return groups


def finished_score(folder: Path) -> tuple[float, int] | None:
    """(best val accuracy, its step) of a finished variant (its final adapter written), else None."""
    log = folder / LOG_NAME
    if not (folder / ADAPTER_NAME).is_file() or not log.is_file():
        return None
    return best_logged(log)


def run_variant(config: TrainScienceQAConfig, folder: Path) -> tuple[float, int, bool]:
    """(best val accuracy, its step, whether this call trained) of one variant: read back when finished, else
    trained, resuming from its checkpoint when an earlier call was stopped."""
    done = finished_score(folder)
    if done is not None:
        return (*done, False)
    resume = bool(checkpoint_dirs(folder / CHECKPOINTS))
    with contextlib.redirect_stdout(sys.stderr):  # the training job's lines are progress here; stdout is the table
        result = train_scienceqa(dataclasses.replace(config, out=str(folder),
                                                     train=dataclasses.replace(config.train, resume=resume)))
    return result.best_val, result.best_step, True


def flat_settings(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A config's nested settings as one mapping by dotted name (``train.lr``), as errors name them."""
    flat = {}
    for key, value in data.items():
        flat |= flat_settings(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
    return flat


def check_same_settings(out: Path, config: AblateConfig) -> None:
    """Refuse to continue an ablation in ``out`` recorded with other training settings (a one-line error naming
    them): its finished variants would be skipped yet not comparable. A setting the recorded file lacks (added to
    the code since) counts as its default."""
    path = out / CONFIG_NAME
    if not path.is_file():
        return
    try:
        before = read_config_file(path)  # the bounded reader of every config file (size, no aliases)
    except MMAdapterError as error:
        raise MMAdapterError(f"cannot read the settings of the ablation there: {error}; choose another --out") from None
    now = flat_settings(config_dict(config))
    recorded = flat_settings(config_dict(type(config)(out=config.out)))  # a setting added since ran at its default
    recorded |= flat_settings(before) if isinstance(before, dict) else {}
    differ = sorted(key for key in now if key not in RUN_ONLY and recorded.get(key) != now[key])
    if differ:
        shown = ", ".join(f"{key}: {recorded.get(key)!r} there, {now[key]!r} now" for key in differ[:4])
        raise MMAdapterError(f"{out}: holds an ablation with other training settings ({shown}); rerun with its "
                             "settings to continue it, or choose another --out")


def ablation_outputs(out: Path, variants: list[str]) -> list[Output]:
    """Every path the job writes: its tables and config in ``out`` and each variant's training run."""
    found = outputs_in("--out", out, [CONFIG_NAME, TABLE_MD, TABLE_JSON, TABLE_PNG])
    for variant in variants:
        found += scienceqa_outputs(out / variant)
    return found


def ablate_scienceqa(config: AblateConfig) -> AblateResult:
    """Train every variant not yet finished (baseline first), then write the table, its JSON and the chart."""
    started = time.perf_counter()
    out = Path(config.out)
    groups = planned_runs(config)
    variants = {entry.variant: entry.config for group in groups for entry in group}
    variants = {BASELINE: variants.pop(BASELINE), **variants}
    config.source.require()
    inputs = {**source_inputs(config.source), "--base": config.model.base}
    with job_folder(out, ablation_outputs(out, list(variants)), inputs):
        check_same_settings(out, config)
        write_config(out, COMMAND, config)
        scores, trained = {}, []
        for number, (variant, variant_config) in enumerate(variants.items(), start=1):
            _say(f"[{number}/{len(variants)}] {variant} -> {out / variant}")
            val_acc, best_step, fresh = run_variant(variant_config, out / variant)
            scores[variant] = (val_acc, best_step)
            trained += [variant] if fresh else []
            _say(f"      {variant}: best val accuracy {val_acc:.4f} at step {best_step}"
                 f"{'' if fresh else ' (finished earlier; not trained again)'}")
        rows = [Row(e.axis.title, e.axis.setting, e.value, e.label, e.variant, e.variant == BASELINE,
                    *scores[e.variant]) for group in groups for e in group]
        table = write_tables(out, rows, baseline_config(config))
    finished = [variant for variant in variants if variant not in trained]
    return AblateResult(out, rows, trained, finished, table, time.perf_counter() - started)


def markdown_table(rows: list[Row]) -> str:
    """One row per variant, grouped by ablation; the baseline's value in bold."""
    baseline = "; ".join(f"{row.ablation}: {row.label}" for row in rows if row.baseline)
    lines = [f"Best val accuracy per variant; the baseline ({baseline}) is in bold.", "",
             "| ablation | value | val acc (%) | best step | run |", "|---|---|---:|---:|---|"]
    for row in rows:
        label = f"**{row.label}** (baseline)" if row.baseline else row.label
        lines.append(f"| {row.ablation} | {label} | {100 * row.val_acc:.2f} | {row.best_step} | {row.variant} |")
    return "\n".join(lines) + "\n"


def write_tables(out: Path, rows: list[Row], baseline: TrainScienceQAConfig) -> str:
    """table.md, table.json (the rows and the baseline's settings) and table.png; returns the Markdown."""
    table = markdown_table(rows)
    atomic_write_text(out / TABLE_MD, table)
    document = {"baseline": config_dict(baseline), "rows": [dataclasses.asdict(row) for row in rows]}
    atomic_write_text(out / TABLE_JSON, json.dumps(document, indent=1) + "\n")
    plot_rows(rows, out / TABLE_PNG)
    return table


def plot_rows(rows: list[Row], path: Path, title: str = "ScienceQA ablations (best val accuracy)") -> None:
    """One bar per variant, grouped by ablation (gaps between groups); baseline bars hatched, and a dashed line at
    the baseline's accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    positions, group_centres, x = [], [], 0.0
    for ablation in dict.fromkeys(row.ablation for row in rows):
        members = [row for row in rows if row.ablation == ablation]
        positions += [x + i for i in range(len(members))]
        group_centres.append((ablation, x + (len(members) - 1) / 2))
        x += len(members) + 1
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(rows) + 2), 4.5))
    heights = [100 * row.val_acc for row in rows]
    bars = ax.bar(positions, heights, 0.8, color=["tab:orange" if row.baseline else "tab:blue" for row in rows])
    for bar, row in zip(bars, rows):
        bar.set_hatch("//" if row.baseline else None)
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 1, f"{bar.get_height():.1f}", ha="center",
                fontsize="x-small")
    baseline = next((100 * row.val_acc for row in rows if row.baseline), None)
    if baseline is not None:
        ax.axhline(baseline, color="tab:orange", linestyle="--", linewidth=1, label="baseline")
        ax.legend(fontsize="small", loc="upper right")
    ax.set_xticks(positions, [row.label for row in rows], fontsize="small")
    for ablation, centre in group_centres:
        ax.text(centre, -0.12, ablation, transform=ax.get_xaxis_transform(), ha="center", va="top", fontsize="small")
    ax.set_ylabel("val accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
