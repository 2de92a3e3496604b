"""Score ScienceQA prediction files into the official table (``mm-adapter table``).

Each output may be "-" for stdout (at most one of them); the Markdown table goes to stdout unless
another output claims it or ``out`` is given (then table.md/csv/json/png go there). The JSON
holds every table printed: the rows, the McNemar tests and the reference rows.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

from mm_adapter.errors import ScienceQAError
from mm_adapter.eval.config import TableConfig
from mm_adapter.eval.cost_plot import cost_plot
from mm_adapter.eval.run_costs import RunCosts, run_costs
from mm_adapter.files.atomic import atomic_write_text
from mm_adapter.files.output_folder import (
    CONFIG_NAME, Output, check_no_overlap, output_folder, outputs_in, write_config,
)
from mm_adapter.scienceqa.data import read_problems
from mm_adapter.scienceqa.metrics import McNemar, Scores, compare, score
from mm_adapter.scienceqa.predictions import Predictions, load_predictions
from mm_adapter.scienceqa.report import csv_text, markdown, plot, read_reference, to_dict

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


def _unique_names(predictions: list[Predictions]) -> list[Predictions]:
    """Rows are named by "method" (else the file stem); disambiguate repeated names by stem."""
    counts = Counter(p.name for p in predictions)
    return [dataclasses.replace(p, name=f"{p.name} ({p.path.stem})") if counts[p.name] > 1 and p.path else p
            for p in predictions]


def _emit(target: str | None, text: str, written: list[Path]) -> None:
    if target == "-":
        sys.stdout.write(text)
    elif target is not None:
        written.append(atomic_write_text(target, text))


def build_table(config: TableConfig) -> TableResult:
    """Score every predictions file against the problems; write the requested outputs."""
    paths = [prediction_path(p) for p in config.predictions]
    problems_file = Path(config.problems)
    problems_file = problems_file / "problems.json" if problems_file.is_dir() else problems_file
    outputs = _outputs(config)
    inputs = {"PREDICTIONS": paths, "--problems": problems_file, "--reference": config.reference}
    _check_outputs(config, outputs, inputs)
    problems = read_problems(config.problems)
    predictions = _unique_names([load_predictions(p) for p in paths])
    reference = read_reference(config.reference) if config.reference else {}
    scores = [score(p, problems, n_boot=config.bootstrap, seed=config.seed) for p in predictions]
    tests = _tests(config, predictions, problems)
    for s in scores:
        if s.missing:
            print(f"note: {s.name}: {len(s.missing)} pids of its split(s) not predicted; scored the "
                  f"{s.scored} it covers", file=sys.stderr)
    costs = _costs(paths, predictions) if config.costs else {}
    cells = {name: cost.cells() for name, cost in costs.items()}  # the Markdown's and the CSV's columns
    table = markdown(scores, reference, tests, cells)
    with output_folder(config.out) if config.out is not None else nullcontext():  # locked: one writer
        written = _write(config, outputs, scores, tests, reference, table, costs, cells)
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


def _costs(paths: list[Path], predictions: list[Predictions]) -> dict[str, RunCosts]:
    """Each row's training costs, where its predictions came from an eval folder of a trained adapter."""
    found = {}
    for path, prediction in zip(paths, predictions):
        costs = run_costs(path)
        if costs is not None:
            found[prediction.name] = costs
    return found


def _write(config: TableConfig, outputs: dict[str, str | None], scores: list[Scores], tests: list[McNemar],
           reference: dict, table: str, costs: dict[str, RunCosts], cells: dict[str, dict[str, str]]) -> list[Path]:
    """Every requested output (files written atomically, "-" to stdout); returns the files written. The JSON holds
    the costs as numbers (seconds, MB), the Markdown and CSV as the table's cells."""
    written: list[Path] = []
    if outputs["json"]:
        document = {"rows": [to_dict(s) | ({"costs": dataclasses.asdict(costs[s.name])} if s.name in costs else {})
                             for s in scores],
                    "mcnemar": [dataclasses.asdict(t) for t in tests], "reference": reference}
        _emit(outputs["json"], json.dumps(document, indent=2) + "\n", written)
    _emit(outputs["csv"], csv_text(scores, reference, cells) if outputs["csv"] else "", written)
    _emit(outputs["markdown"], table if outputs["markdown"] else "", written)
    if outputs["plot"]:
        plot(scores, outputs["plot"], reference, title=config.title)
        written.append(Path(outputs["plot"]))
    if outputs["cost_plot"]:
        cost_plot(scores, costs, outputs["cost_plot"], title=config.title)
        written.append(Path(outputs["cost_plot"]))
    if config.out is not None:
        written.append(write_config(config.out, "table", config))
    return written

