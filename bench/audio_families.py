"""Issue 24 item 3: runs on the generated audio set compared family by family.

Each run is an `eval scienceqa` folder on the same split of a `data synthetic-audio` set. Per family the table gives
each run's accuracy with a 95% bootstrap interval, and McNemar of the first run against each other run on the same
problems. The audio families pooled (every family but the hint control) give the issue's target:
the first run (sound) at least 25 points above the run named by `--silence`.

    python -m bench.audio_families --data runs/audioset runs/audio/real-test runs/audio/silence-test \\
        runs/audio/text-test runs/audio/random-test --silence silence-test --out runs/audio/families.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from mm_adapter.errors import MMAdapterError
from mm_adapter.files.atomic import atomic_write_text
from mm_adapter.scienceqa.data import read_official
from mm_adapter.scienceqa.metrics import bootstrap_ci, mcnemar
from mm_adapter.scienceqa.predictions import check_predictions, load_predictions

CONTROL = "control_hint"  # answered from its hint: not one of the audio families
POOLED = "audio families"
TARGET_POINTS = 25.0


def families(data: Path) -> dict[str, str]:
    """pid -> family, from the set's problems.json (the generator's own field)."""
    raw = json.loads((data / "problems.json").read_text())
    return {pid: record["family"] for pid, record in raw.items() if isinstance(record, dict) and "family" in record}


def correct_by_run(runs: list[Path], data: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    """The pids every run predicted (in one order) and, per run folder name, whether each was right."""
    problems = {p.pid: p for p in read_official(data)[0]}
    predictions = {run.name: load_predictions(run / "predictions.json") for run in runs}
    for found in predictions.values():
        check_predictions(found, problems)
    pids = sorted(set.intersection(*(set(p.results) for p in predictions.values())), key=int)
    if not pids:
        raise MMAdapterError("the runs share no predicted problem (not the same split of the same set?)")
    gold = np.array([problems[pid].answer for pid in pids])
    return pids, {name: np.array([p.results[pid] for pid in pids]) == gold for name, p in predictions.items()}


def family_table(pids: list[str], correct: dict[str, np.ndarray], family_of: dict[str, str], silence: str,
                 n_boot: int = 1000) -> tuple[str, dict]:
    """Markdown table and its numbers: per family (and the audio families pooled) each run's accuracy [95% CI],
    n, and McNemar p of the first run against every other run."""
    names = list(correct)
    groups = sorted({family_of[pid] for pid in pids})
    member = np.array([[family_of[pid] == g for g in groups] + [family_of[pid] != CONTROL] for pid in pids])
    labels = [*groups, POOLED]
    result: dict = {"runs": names, "families": {}}
    header = ["family", "n", *names, *(f"{names[0]} vs {other}: p" for other in names[1:])]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for column, label in enumerate(labels):
        rows = member[:, column]
        cells, numbers = [], {}
        for name in names:
            right = correct[name][rows]
            acc = 100.0 * right.mean()
            low, high = bootstrap_ci(right, np.ones((len(right), 1), bool), n_boot)[0]
            cells.append(f"{acc:.1f} [{low:.1f}, {high:.1f}]")
            numbers[name] = {"acc": round(acc, 2), "ci": [float(low), float(high)]}
        tests = [mcnemar(correct[names[0]][rows], correct[other][rows], names[0], other) for other in names[1:]]
        cells += [f"{test.p_value:.2g}" for test in tests]
        result["families"][label] = {"n": int(rows.sum()), "runs": numbers,
                                     "mcnemar": {t.b: {"only_first": t.only_a, "only_other": t.only_b,
                                                       "p": t.p_value} for t in tests}}
        name = f"**{label}**" if label == POOLED else label
        lines.append(f"| {name} | {int(rows.sum())} | " + " | ".join(cells) + " |")
    pool = member[:, -1]
    gain = 100.0 * (correct[names[0]][pool].mean() - correct[silence][pool].mean())
    verdict = "met" if gain >= TARGET_POINTS else "missed"
    result["target"] = {"first": names[0], "silence": silence, "points": round(gain, 2), "verdict": verdict}
    lines += ["", f"Target (issue 24): {names[0]} beats {silence} by at least {TARGET_POINTS:g} points on the audio "
                  f"families pooled: {gain:+.1f} points, **{verdict}**."]
    return "\n".join(lines) + "\n", result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="eval scienceqa folders; the first is the one with sound")
    parser.add_argument("--data", type=Path, required=True, help="the data synthetic-audio folder they evaluated")
    parser.add_argument("--silence", required=True, help="the folder name of the run trained on silence")
    parser.add_argument("--out", type=Path, help="write the table here (and its numbers beside it as .json)")
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args(argv)
    try:
        if args.silence not in {run.name for run in args.runs}:
            raise MMAdapterError(f"--silence {args.silence}: no such run among {', '.join(r.name for r in args.runs)}")
        if len({run.name for run in args.runs}) != len(args.runs):
            raise MMAdapterError("two runs share a folder name; the table names runs by folder")
        family_of = families(args.data)
        pids, correct = correct_by_run(args.runs, args.data)
        missing = [pid for pid in pids if pid not in family_of]
        if missing:
            raise MMAdapterError(f"{args.data / 'problems.json'}: problem {missing[0]} has no family (not a "
                                 "data synthetic-audio set?)")
        table, numbers = family_table(pids, correct, family_of, args.silence, args.bootstrap)
    except (MMAdapterError, OSError, json.JSONDecodeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(table, end="")
    if args.out:
        atomic_write_text(args.out, table)
        atomic_write_text(args.out.with_suffix(".json"), json.dumps(numbers, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
