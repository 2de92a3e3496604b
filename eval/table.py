"""Score ScienceQA prediction files into the official table.

    python -m eval.table PREDICTIONS [PREDICTIONS ...] --problems problems.json \
        [--reference published_tables.json] [--json OUT] [--markdown OUT] [--csv OUT] \
        [--plot OUT.png] [--bootstrap N] [--mcnemar]

Each OUT may be "-" for stdout (at most one of them); the Markdown table goes to stdout unless
another output claims it. Bad input prints one line "error: ..." on stderr and exits with 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections import Counter
from itertools import combinations
from pathlib import Path
from typing import NoReturn, Sequence

from scienceqa.data import read_problems
from scienceqa.errors import ScienceQAError
from scienceqa.metrics import compare, score
from scienceqa.predictions import Predictions, load_predictions
from scienceqa.report import csv_text, markdown, plot, read_reference, to_dict

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line instead of usage + message
        raise ScienceQAError(f"{message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m eval.table", description=__doc__.split("\n\n")[0])
    p.add_argument("predictions", nargs="+", type=Path, help='official predictions JSON: {"results": {pid: index}}')
    p.add_argument("--problems", required=True, type=Path, help="problems.json (or the folder holding it)")
    p.add_argument("--reference", type=Path, help="published tables JSON: {method: {column: percent}}")
    p.add_argument("--json", help="write the rows as a JSON list ('-' for stdout)")
    p.add_argument("--markdown", help="write the Markdown table here ('-' for stdout, the default)")
    p.add_argument("--csv", help="write the rows as CSV ('-' for stdout)")
    p.add_argument("--plot", type=Path, help="write a grouped bar chart PNG")
    p.add_argument("--bootstrap", type=int, default=0, metavar="N", help="N bootstrap resamples for 95%% intervals")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--mcnemar", action="store_true", help="McNemar test between every pair of files")
    return p


def _check_outputs(args: argparse.Namespace) -> None:
    """At most one output on stdout, and never write over one of the inputs."""
    outputs = {"--json": args.json, "--markdown": args.markdown, "--csv": args.csv, "--plot": args.plot}
    if sum(str(v) == "-" for v in outputs.values()) > 1:
        raise ScienceQAError("only one of --json/--markdown/--csv can be '-' (stdout)")
    if str(args.plot) == "-":
        raise ScienceQAError("--plot needs a file name, not '-'")
    if args.bootstrap < 0:
        raise ScienceQAError("--bootstrap must be >= 0")
    problems = args.problems / "problems.json" if args.problems.is_dir() else args.problems
    inputs = [p for p in [*args.predictions, problems, args.reference] if p is not None]
    for flag, value in outputs.items():
        if value is not None and str(value) != "-" and any(_same_file(Path(value), p) for p in inputs):
            raise ScienceQAError(f"{flag} {value} is one of the inputs; refusing to overwrite it")


def _same_file(a: Path, b: Path) -> bool:
    """Same path after resolving, or the same file through another name (links)."""
    if a.resolve() == b.resolve():
        return True
    return a.exists() and b.exists() and os.path.samefile(a, b)


def _unique_names(predictions: list[Predictions]) -> list[Predictions]:
    """Rows are named by "method" (else the file stem); disambiguate repeated names by stem."""
    counts = Counter(p.name for p in predictions)
    return [dataclasses.replace(p, name=f"{p.name} ({p.path.stem})") if counts[p.name] > 1 and p.path else p
            for p in predictions]


def _write(target: str | None, text: str) -> None:
    if target == "-":
        sys.stdout.write(text)
    elif target is not None:
        Path(target).write_text(text, encoding="utf-8")


def run(args: argparse.Namespace) -> None:
    _check_outputs(args)
    problems = read_problems(args.problems)
    predictions = _unique_names([load_predictions(p) for p in args.predictions])
    reference = read_reference(args.reference) if args.reference else {}
    scores = [score(p, problems, n_boot=args.bootstrap, seed=args.seed) for p in predictions]
    tests = [compare(a, b, problems) for a, b in combinations(predictions, 2)] if args.mcnemar else []
    for s in scores:
        if s.missing:
            print(f"note: {s.name}: {len(s.missing)} pids of its split(s) not predicted; scored the "
                  f"{s.scored} it covers", file=sys.stderr)
    stdout_taken = "-" in (args.json, args.csv)
    markdown_target = args.markdown or (None if stdout_taken else "-")
    _write(args.json, json.dumps([to_dict(s) for s in scores], indent=2) + "\n" if args.json else "")
    _write(args.csv, csv_text(scores, reference) if args.csv else "")
    _write(markdown_target, markdown(scores, reference, tests) if markdown_target else "")
    if args.plot:
        plot(scores, args.plot, reference)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        run(build_parser().parse_args(argv))
    except (ValueError, OSError) as e:  # incl. ScienceQAError; bad input: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
