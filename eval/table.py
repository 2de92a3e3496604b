"""Score ScienceQA prediction files into the official table (``mm-adapter table``).

Each output may be "-" for stdout (at most one of them); the Markdown table goes to stdout unless
another output claims it or ``out`` is given (then table.md/csv/json/png go there). The JSON
holds every table printed: the rows (with their split and eval folder), the McNemar tests and the
reference rows.

A row is named by what it is, from its eval folder's record (``eval/record.py``): method, run (or base), prompt
format, split (``val[:40]`` when limited); two rows that would print the same name are refused unless ``--name``
tells them apart, and each row's costs come from its own record. ``--problems`` defaults to the file the records
name. Every input is read through the checked readers and every output is made in memory and its place checked
before the first is written, so a refusal leaves nothing half-written.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

from mm_adapter.errors import ScienceQAError
from mm_adapter.eval.config import TableConfig
from mm_adapter.eval.cost_plot import cost_plot_png
from mm_adapter.eval.record import EVAL_RECORD, EvalRecord, eval_record, problems_fingerprint
from mm_adapter.eval.run_costs import RunCosts, record_costs
from mm_adapter.files.atomic import atomic_write_bytes, atomic_write_text
from mm_adapter.files.output_folder import (
    CONFIG_NAME, Output, check_no_overlap, output_folder, outputs_in, write_config,
)
from mm_adapter.scienceqa.data import read_problems
from mm_adapter.scienceqa.metrics import McNemar, Scores, compare, score
from mm_adapter.scienceqa.predictions import Predictions, load_predictions
from mm_adapter.scienceqa.report import PUBLISHED_SPLIT, csv_text, markdown, plot_png, read_reference, to_dict

PREDICTIONS_IN_FOLDER = "predictions.json"  # what `eval scienceqa --out FOLDER` writes


@dataclass
class TableResult:
    scores: list[Scores]
    tests: list[McNemar]
    reference: dict
    markdown: str
    written: list[Path]


def prediction_path(given: str) -> Path:
    """A predictions file, or an evaluation's output folder holding predictions.json."""
    path = Path(given)
    return path / PREDICTIONS_IN_FOLDER if path.is_dir() else path


def _outputs(config: TableConfig) -> dict[str, str | None]:
    outputs = {"json": config.json, "markdown": config.markdown, "csv": config.csv, "plot": config.plot,
               "cost_plot": config.cost_plot}
    if config.out is not None:
        folder = Path(config.out)
        for kind, name in (("json", "table.json"), ("markdown", "table.md"), ("csv", "table.csv"),
                           ("plot", "table.png")):
            outputs[kind] = outputs[kind] or str(folder / name)
        if config.costs:
            outputs["cost_plot"] = outputs["cost_plot"] or str(folder / "costs.png")
    elif not any(value == "-" for value in outputs.values()) and config.markdown is None:
        outputs["markdown"] = "-"
    return outputs


def _flag(kind: str) -> str:
    """The command-line spelling of an output's config field (cost_plot: --cost-plot)."""
    return f"--{kind.replace('_', '-')}"


def _check_outputs(config: TableConfig, outputs: dict[str, str | None], inputs: dict[str, object]) -> None:
    """At most one output on stdout, and never write over one of the inputs."""
    if sum(value == "-" for value in outputs.values()) > 1:
        raise ScienceQAError("only one of --json/--markdown/--csv can be '-' (stdout)")
    for kind in ("plot", "cost_plot"):
        if outputs[kind] == "-":
            raise ScienceQAError(f"{_flag(kind)} needs a file name, not '-'")
    written = [Output(_flag(kind) if getattr(config, kind) == value else "--out", Path(value))
               for kind, value in outputs.items() if value not in (None, "-")]
    check_no_overlap(written + (outputs_in("--out", config.out, [CONFIG_NAME]) if config.out else []), inputs)


@dataclass(frozen=True)
class Row:
    """One computed row: its predictions file, its predictions (named), and what its eval folder recorded."""

    path: Path
    predictions: Predictions
    record: EvalRecord | None

    @property
    def split_tag(self) -> str | None:
        return self.record.split_tag if self.record else None


def _records(paths: list[Path]) -> list[EvalRecord | None]:
    """Each predictions file's eval record (an eval folder's ``predictions.json``), else None."""
    return [eval_record(path.parent) if path.name == PREDICTIONS_IN_FOLDER else None for path in paths]


def problems_file(config: TableConfig, records: list[EvalRecord | None], paths: list[Path]) -> Path:
    """``--problems`` (a file, or the folder holding problems.json), else the one file every eval record names."""
    if config.problems is not None:
        given = Path(config.problems)
        return given / "problems.json" if given.is_dir() else given
    named = {}
    for path, record in zip(paths, records):
        if record is None or record.problems_file is None:
            raise ScienceQAError(f"--problems: needed, since {path} records no problems file (give it with "
                                 "--problems FILE)")
        if not os.path.lexists(record.problems_file):
            raise ScienceQAError(f"--problems: {record.folder}'s record names {record.problems_file}, which is not "
                                 "there (moved?); give the problems file with --problems FILE")
        named.setdefault(record.problems_file, path)
    if len(named) > 1:
        shown = ", ".join(f"{path} was scored on {file}" for file, path in named.items())
        raise ScienceQAError(f"--problems: the rows were evaluated on different problems files ({shown}); "
                             "give the one to score against with --problems FILE")
    return next(iter(named))


def _row_name(prediction: Predictions, record: EvalRecord | None, mixed: bool) -> str:
    """What a row is: the eval's --name or its recorded method, run, format and split; a file without a record keeps
    its "method" (else its stem). Among rows of different splits or limits (``mixed``), a name that does not say
    its split gets it appended."""
    name = (record.name or record.row_name() if record else None) or prediction.name
    tag = record.split_tag if record else None
    return name if tag is None or not mixed or name.endswith(tag) else f"{name} {tag}"


def _named(config: TableConfig, rows: list[Row]) -> list[Row]:
    """Rows under their final names: ``--name`` (one per PREDICTIONS) or what each is; two alike are refused."""
    if config.name is not None and len(config.name) != len(rows):
        raise ScienceQAError(f"--name: {len(config.name)} name(s) for {len(rows)} PREDICTIONS; give one per file, "
                             "in their order")
    mixed = len(_known_splits(rows)) > 1
    names = config.name or [_row_name(row.predictions, row.record, mixed) for row in rows]
    seen: dict[str, Path] = {}
    for row, name in zip(rows, names):
        if name in seen:
            raise ScienceQAError(f"{row.path}: its row would be named {name!r} like the row of {seen[name]}; tell "
                                 "them apart with --name (one per PREDICTIONS, in order)")
        seen[name] = row.path
    return [dataclasses.replace(row, predictions=dataclasses.replace(row.predictions, name=name))
            for row, name in zip(rows, names)]


def _check_fingerprints(rows: list[Row], problems: dict, problems_path: Path) -> None:
    """Each row's problems as the eval record fingerprinted them: the file it recorded, changed since, is refused;
    another file (another layout of the benchmark, given with --problems) that differs is noted."""
    for row in rows:
        record = row.record
        if record is None or record.fingerprint is None or any(pid not in problems for pid in row.predictions.results):
            continue  # unknown pids are named by the scorer
        if problems_fingerprint([problems[pid] for pid in row.predictions.results]) == record.fingerprint:
            continue
        if record.problems_file is not None and _same_file(record.problems_file, problems_path):
            raise ScienceQAError(f"{problems_path}: its problems changed since {record.folder} was evaluated on them "
                                 f"(fingerprint {record.fingerprint} in its {EVAL_RECORD}); evaluate again")
        print(f"note: {row.predictions.name}: {problems_path} says something else of its problems than the data it "
              "was evaluated on", file=sys.stderr)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _known_splits(rows: list[Row]) -> set[str]:
    """The splits (with limits) the rows' records name; a bare predictions file (a published one) names none."""
    return {row.split_tag for row in rows if row.split_tag is not None}


def _check_splits(rows: list[Row], config: TableConfig) -> None:
    """Rows of different splits or limits are marked (their names say which); a paired test between them is
    refused, since it would pair different problems."""
    tags = _known_splits(rows)
    if len(tags) > 1:
        shown = ", ".join(sorted(tags))
        if config.mcnemar or config.mcnemar_against is not None:
            flag = "--mcnemar" if config.mcnemar else "--mcnemar-against"
            raise ScienceQAError(f"{flag}: the rows cover different splits or limits ({shown}); a paired test "
                                 "needs the same problems")
        print(f"note: the rows cover different splits or limits ({shown}); each row's name says which",
              file=sys.stderr)


def _check_target(kind: str, flag: str, target: str | None) -> None:
    """An output file can be written: not a folder, and its nearest existing folder writable (checked for every
    output before any is written)."""
    if target in (None, "-"):
        return
    path = Path(target)
    if path.is_dir():
        raise ScienceQAError(f"{flag} {target}: is a folder; give a file name for the {kind}")
    existing = next(p for p in (path.parent, *path.parent.parents) if os.path.lexists(p))
    if not existing.is_dir():
        raise ScienceQAError(f"{flag} {target}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ScienceQAError(f"{flag} {target}: {existing} is not writable")


def build_table(config: TableConfig) -> TableResult:
    """Score every predictions file against the problems; write the requested outputs, each checked and made
    before any is written."""
    paths = [prediction_path(p) for p in config.predictions]
    records = _records(paths)
    problems_path = problems_file(config, records, paths)
    outputs = _outputs(config)
    inputs = {"PREDICTIONS": paths, "--problems": problems_path, "--reference": config.reference}
    _check_outputs(config, outputs, inputs)
    for kind, target in outputs.items():
        _check_target(kind, _flag(kind) if getattr(config, kind) == target else "--out", target)
    problems = read_problems(problems_path)
    rows = _named(config, [Row(path, load_predictions(path), record) for path, record in zip(paths, records)])
    _check_splits(rows, config)
    _check_fingerprints(rows, problems, problems_path)
    predictions = [row.predictions for row in rows]
    reference = read_reference(config.reference) if config.reference else {}
    scores = [score(p, problems, n_boot=config.bootstrap, seed=config.seed) for p in predictions]
    tests = _tests(config, predictions, problems)
    for s in scores:
        if s.missing:
            print(f"note: {s.name}: {len(s.missing)} pids of its split(s) not predicted; scored the "
                  f"{s.scored} it covers", file=sys.stderr)
    costs = _costs(rows) if config.costs else {}
    cells = {name: cost.cells() for name, cost in costs.items()}  # the Markdown's and the CSV's columns
    table = markdown(scores, reference, tests, cells)
    made = _made(config, outputs, rows, scores, tests, reference, table, costs, cells)
    with output_folder(config.out) if config.out is not None else nullcontext():  # locked: one writer
        written = _write(config, made)
    return TableResult(scores, tests, reference, table, written)


def _tests(config: TableConfig, predictions: list[Predictions], problems) -> list[McNemar]:
    """Every pair (--mcnemar), or every row against one method (--mcnemar-against NAME)."""
    if config.mcnemar_against is not None:
        anchor = [p for p in predictions if p.name == config.mcnemar_against]
        if not anchor:
            raise ScienceQAError(f"--mcnemar-against {config.mcnemar_against}: no row has that name "
                                 f"(rows: {', '.join(p.name for p in predictions)})")
        return [compare(anchor[0], p, problems) for p in predictions if p is not anchor[0]]
    return [compare(a, b, problems) for a, b in combinations(predictions, 2)] if config.mcnemar else []


def _costs(rows: list[Row]) -> dict[str, RunCosts]:
    """Each row's training costs, from its own eval record (never from another row's, never re-resolved from this
    folder); a row whose costs cannot be trusted gets none, and a note saying why."""
    found = {}
    for row in rows:
        costs, note = record_costs(row.record) if row.record is not None else (None, None)
        if note:
            print(f"note: {row.predictions.name}: {note}", file=sys.stderr)
        if costs is not None:
            found[row.predictions.name] = costs
    return found


@dataclass(frozen=True)
class Made:
    """One output, made in memory: where it goes ("-": stdout) and its content."""

    target: str
    content: str | bytes


def _made(config: TableConfig, outputs: dict[str, str | None], rows: list[Row], scores: list[Scores],
          tests: list[McNemar], reference: dict, table: str, costs: dict[str, RunCosts],
          cells: dict[str, dict[str, str]]) -> list[Made]:
    """Every requested output, made before any is written (a chart that fails to draw leaves nothing behind). The
    JSON holds the costs as numbers (seconds, MB) and each row's split and eval folder; the Markdown and the CSV
    the costs as the table's cells."""
    made = []
    if outputs["json"]:
        document = {"rows": [to_dict(s) | _provenance(row) | ({"costs": dataclasses.asdict(costs[s.name])}
                                                            if s.name in costs else {})
                             for row, s in zip(rows, scores)],
                    "mcnemar": [dataclasses.asdict(t) for t in tests], "reference": reference,
                    "reference_split": PUBLISHED_SPLIT if reference else None}
        made.append(Made(outputs["json"], json.dumps(document, indent=2) + "\n"))
    if outputs["csv"]:
        made.append(Made(outputs["csv"], csv_text(scores, reference, cells)))
    if outputs["markdown"]:
        made.append(Made(outputs["markdown"], table))
    if outputs["plot"]:
        made.append(Made(outputs["plot"], plot_png(scores, reference, title=config.title)))
    if outputs["cost_plot"]:
        made.append(Made(outputs["cost_plot"], cost_plot_png(scores, costs, title=config.title)[0]))
    return made


def _provenance(row: Row) -> dict:
    """What a JSON row was evaluated on: split, limit, eval folder (absolute), when its folder recorded them."""
    record = row.record
    if record is None:
        return {}
    return {"split": record.split, "limit": record.limit, "eval_folder": str(record.folder.resolve())}


def _write(config: TableConfig, made: list[Made]) -> list[Path]:
    """Write what :func:`_made` made (files atomically, "-" to stdout), then OUT/config.yaml; returns the files."""
    written: list[Path] = []
    for output in made:
        if output.target == "-":
            sys.stdout.write(output.content)
        elif isinstance(output.content, bytes):
            written.append(atomic_write_bytes(output.target, output.content))
        else:
            written.append(atomic_write_text(output.target, output.content))
    if config.out is not None:
        written.append(write_config(config.out, "table", config))
    return written
