"""Formatting of scored tables: JSON rows, a Markdown table with published reference rows,
CSV and a grouped bar chart. Pure presentation; the numbers come from `scienceqa.metrics`."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Mapping, Sequence

from mm_adapter.errors import fail
from mm_adapter.files.atomic import atomic_write_bytes
from mm_adapter.scienceqa.data import read_benchmark_json
from mm_adapter.scienceqa.metrics import COLUMN_NAMES, COLUMNS, McNemar, Scores

Reference = dict[str, dict[str, float]]  # method -> column -> published percent
PARTIAL_MARK = "†"
PUBLISHED_SPLIT = "test"  # the published ScienceQA tables are of the test split; their rows say so
PUBLISHED = f" (published, {PUBLISHED_SPLIT})"


def published(name: str) -> str:
    """A published row's label: the method and the split its numbers are of."""
    return name + PUBLISHED


def read_reference(path: str | Path) -> Reference:
    """A published-tables JSON: {method: {column: percent}}; a method may give only some columns."""
    raw = read_benchmark_json(path)
    if not isinstance(raw, dict):
        raise fail(path, "must be a JSON object of method -> {column: percent}")
    for method, row in raw.items():
        if not isinstance(row, dict):
            raise fail(path, f"method {method!r} must map columns to numbers")
        for column, value in row.items():
            if column not in COLUMN_NAMES:
                raise fail(path, f"method {method!r}: unknown column (expected {' '.join(COLUMN_NAMES)})", field=column)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise fail(path, f"method {method!r}: value must be a number, got {value!r}", field=column)
    return {method: {c: float(v) for c, v in row.items()} for method, row in raw.items()}


def to_dict(scores: Scores) -> dict:
    """One JSON row: the columns as percent, and per column n (problems behind it), unknown (null
    field, left out) and, with bootstrap, ci = [low, high]."""
    row: dict = {"method": scores.name}
    row.update({name: col.acc for name, col in scores.columns.items()})
    row["n"] = {name: col.n for name, col in scores.columns.items()}
    row["unknown"] = {name: col.unknown for name, col in scores.columns.items()}
    if any(col.ci for col in scores.columns.values()):
        row["ci"] = {name: list(col.ci) if col.ci else None for name, col in scores.columns.items()}
    row.update(scored=scores.scored, no_answer=scores.no_answer, missing=len(scores.missing))
    return row


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _ordered_rows(scores: Sequence[Scores], reference: Reference) -> list[tuple[str, dict, Scores | None]]:
    """Computed rows, each followed by the published row of the same name; the other published
    rows after them. Items: (label, {column: percent}, scores or None)."""
    rows, used = [], set()
    for s in scores:
        rows.append((s.name, {n: c.acc for n, c in s.columns.items()}, s))
        if s.name in reference:
            rows.append((published(s.name), reference[s.name], None))
            used.add(s.name)
    rows += [(published(name), row, None) for name, row in reference.items() if name not in used]
    return rows


def _footnotes(scores: Sequence[Scores]) -> list[str]:
    notes = []
    for s in scores:
        fields = {c.field: s.columns[c.name].unknown for c in COLUMNS if c.field and s.columns[c.name].partial}
        if fields:
            known = ", ".join(f"{f} known for {s.scored - u} of {s.scored}" for f, u in fields.items())
            notes.append(f"{PARTIAL_MARK} {s.name}: {known}; marked columns are computed over those only.")
        if s.no_answer:
            notes.append(f"{s.name}: {s.no_answer} predictions are -1 (no answer) and count as wrong.")
        if s.missing:
            notes.append(f"{s.name}: {len(s.missing)} pids of its split are not predicted and not scored.")
    return notes


Extra = Mapping[str, Mapping[str, str]]  # method name -> {column: text}, e.g. what a method cost to train


def _extra_columns(extra: Extra | None) -> list[str]:
    return list(dict.fromkeys(column for cells in (extra or {}).values() for column in cells))


def markdown(scores: Sequence[Scores], reference: Reference | None = None, tests: Sequence[McNemar] = (),
             extra: Extra | None = None) -> str:
    """The table (with an n row under each computed row), ``extra`` columns after Avg, footnotes, McNemar tests."""
    more = _extra_columns(extra)
    lines = ["| Method | " + " | ".join([*COLUMN_NAMES, *more]) + " |",
             "|---" + "|---:" * (len(COLUMN_NAMES) + len(more)) + "|"]
    for label, values, s in _ordered_rows(scores, reference or {}):
        cells = []
        for name in COLUMN_NAMES:
            text = _cell(values.get(name))
            col = s.columns[name] if s else None
            if col and col.ci:
                text += f" [{col.ci[0]:.2f}, {col.ci[1]:.2f}]"
            cells.append(text + (PARTIAL_MARK if col and col.partial else ""))
        cells += [(extra or {}).get(s.name, {}).get(column, "") if s else "" for column in more]
        lines.append(f"| {'**' + label + '**' if s else label} | " + " | ".join(cells) + " |")
        if s:
            counts = [f"{s.columns[n].n}{PARTIAL_MARK if s.columns[n].partial else ''}" for n in COLUMN_NAMES]
            lines.append("| ↳ n | " + " | ".join(counts + [""] * len(more)) + " |")
    notes = _footnotes(scores)
    if any(c.ci for s in scores for c in s.columns.values()):
        notes.append("[low, high]: 95% bootstrap interval.")
    if notes:
        lines += [""] + notes
    if tests:
        lines += ["", "McNemar tests (paired, on common pids):", "",
                  "| A | B | pairs | A right, B wrong | A wrong, B right | test | p |", "|---|---|---:|---:|---:|---|---:|"]
        lines += [f"| {t.a} | {t.b} | {t.n} | {t.only_a} | {t.only_b} | {t.method} | {t.p_value:.3g} |" for t in tests]
    return "\n".join(lines) + "\n"


def csv_text(scores: Sequence[Scores], reference: Reference | None = None, extra: Extra | None = None) -> str:
    """One CSV row per computed/published method: percents, n_<column> for computed rows, then ``extra``."""
    more = _extra_columns(extra)
    header = ["method", "kind", *COLUMN_NAMES, *(f"n_{c}" for c in COLUMN_NAMES), *more]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for label, values, s in _ordered_rows(scores, reference or {}):
        counts = [s.columns[c].n for c in COLUMN_NAMES] if s else [""] * len(COLUMN_NAMES)
        name = s.name if s else label.removesuffix(PUBLISHED)
        cells = [(extra or {}).get(name, {}).get(column, "") if s else "" for column in more]
        writer.writerow([name, "computed" if s else "published", *(values.get(c, "") for c in COLUMN_NAMES), *counts,
                         *cells])
    return buffer.getvalue()


def plot(scores: Sequence[Scores], path: str | Path, reference: Mapping[str, Mapping[str, float]] | None = None,
         title: str = "ScienceQA") -> None:
    """Write :func:`plot_png` to ``path`` (atomically)."""
    atomic_write_bytes(path, plot_png(scores, reference, title))


def png_bytes(fig) -> bytes:
    """A matplotlib figure as PNG bytes (closed after): a chart is drawn in memory, so a caller can check every
    output before it writes any."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return buffer.getvalue()


def plot_png(scores: Sequence[Scores], reference: Mapping[str, Mapping[str, float]] | None = None,
             title: str = "ScienceQA") -> bytes:
    """Grouped bar chart (columns x methods) as PNG; error bars only where bootstrap intervals were computed;
    published rows of the same names are drawn hatched next to the computed ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    reference = reference or {}
    series = []  # (label, values, errors, hatched)
    for s in scores:
        values = [s.columns[c].acc for c in COLUMN_NAMES]
        errors = None
        if any(s.columns[c].ci for c in COLUMN_NAMES):
            errors = [(v - s.columns[c].ci[0], s.columns[c].ci[1] - v) if s.columns[c].ci and v is not None
                      else (0, 0) for c, v in zip(COLUMN_NAMES, values)]
        series.append((s.name, values, errors, False))
        if s.name in reference:
            series.append((published(s.name), [reference[s.name].get(c) for c in COLUMN_NAMES], None, True))
    x = np.arange(len(COLUMN_NAMES))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(min(16, 8 + 0.8 * len(series)), 5))
    for i, (label, values, errors, hatched) in enumerate(series):
        heights = np.array([np.nan if v is None else v for v in values], dtype=float)
        yerr = np.array(errors, dtype=float).T if errors else None
        ax.bar(x + (i - (len(series) - 1) / 2) * width, heights, width, yerr=yerr, capsize=2 if errors else 0,
               label=label,
               hatch="//" if hatched else None, alpha=0.6 if hatched else 1.0)
    ax.set_xticks(x, COLUMN_NAMES)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=min(4, len(series)))
    fig.tight_layout()
    return png_bytes(fig)
