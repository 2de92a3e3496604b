"""The seeds summary of a methods comparison (issue 25, items 4-5): per method, test Avg at each seed of its chosen
learning rate, mean ± sample sd, trainable parameters and mean train minutes; paired McNemar of each method against
full fine-tuning at the same seed; and the item-5 targets checked from those numbers.

Every number is read from the run folders and test predictions it names (scored by ``scienceqa.metrics``, costs by
``eval.run_costs``, as the comparison table does); nothing is typed in. The choices the targets depend on are made
on val only: the best adapter method (v1 or V2) and the best recipe are the ones with the highest mean val over
their seeds. A target whose numbers are not all in yet (a seed still training) is "pending", never met or missed.
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass
from pathlib import Path

from mm_adapter.eval.run_costs import run_costs
from mm_adapter.files.atomic import atomic_write_json, atomic_write_text
from mm_adapter.scienceqa.data import read_problems
from mm_adapter.scienceqa.metrics import McNemar, compare, score
from mm_adapter.scienceqa.predictions import Predictions, load_predictions

ADAPTERS = ("llama-adapter", "llama-adapter-v2")  # "ours": the methods the first target is about
ANCHOR = "full"  # what every method is tested against, and the first target's reference
WITHIN_POINTS = 1.0  # the best adapter's mean test Avg at most this far below full's
PARAMETER_RATIO = 25  # ... with under 1/25 of full's trainable parameters
RECIPE_TARGET = 55.0  # the best recipe's test Avg


@dataclass(frozen=True)
class SeedRun:
    seed: int
    val: float | None  # the run's best val accuracy (fraction); None: not trained (zero-shot)
    predictions: Path | None  # its test predictions.json; None until tested


@dataclass(frozen=True)
class MethodSeeds:
    """One method's runs at its chosen lr; a method with no lr (zero-shot) has one run, the same at every seed."""

    name: str
    lr: float | None
    position: str | None  # interior or at an edge of its grid
    runs: tuple[SeedRun, ...]


@dataclass(frozen=True)
class Row:
    name: str
    lr: float | None
    position: str | None
    test: dict[int, float]  # test Avg (%) per tested seed
    val: dict[int, float]  # best val (%) per trained seed
    trainable: int | None
    train_min: float | None  # mean over tested seeds with a recorded train time
    complete: bool  # every wanted seed tested

    @property
    def mean(self) -> float | None:
        return statistics.mean(self.test.values()) if self.test else None

    @property
    def sd(self) -> float | None:
        """Sample standard deviation (n - 1); none from one seed."""
        return statistics.stdev(self.test.values()) if len(self.test) > 1 else None

    @property
    def val_mean(self) -> float | None:
        return statistics.mean(self.val.values()) if self.val else None


def _row(method: MethodSeeds, problems, seeds: list[int]) -> tuple[Row, dict[int, Predictions]]:
    tested = {run.seed: run for run in method.runs if run.predictions is not None}
    predictions = {seed: load_predictions(run.predictions) for seed, run in tested.items()}
    costs = [run_costs(run.predictions) for run in tested.values()]
    trainable = next((c.trainable for c in costs if c is not None and c.trainable is not None), None)
    minutes = [c.train_s / 60 for c in costs if c is not None and c.train_s is not None]
    untrained = method.lr is None
    row = Row(method.name, method.lr, method.position,
              {seed: score(p, problems)["Avg"].acc for seed, p in predictions.items()},
              {run.seed: 100 * run.val for run in method.runs if run.val is not None},
              0 if untrained and tested else trainable, statistics.mean(minutes) if minutes else None,
              bool(tested) if untrained else all(seed in tested for seed in seeds))
    return row, predictions


def _paired(rows: list[Row], predictions: dict[str, dict[int, Predictions]], problems,
            seeds: list[int]) -> list[tuple[int, McNemar]]:
    """McNemar of each method against full at each seed both were tested at (an untrained method's one run is its
    prediction at every seed)."""
    anchor = predictions.get(ANCHOR, {})
    tests = []
    for row in rows:
        if row.name == ANCHOR:
            continue
        for seed in seeds:
            mine = predictions[row.name].get(0 if row.lr is None else seed)
            if mine is not None and seed in anchor:
                tests.append((seed, compare(mine, anchor[seed], problems)))
    return tests


def _target(name: str, status: str, value: str) -> dict:
    return {"target": name, "status": status, "value": value}


def targets(rows: list[Row]) -> list[dict]:
    """Item 5's checks: the best adapter on val (v1 or V2) within a point of full's mean test Avg with under 1/25 of
    its trainable parameters; the best recipe on val at least 55 test Avg. Pending until every seed is in."""
    by_name = {row.name: row for row in rows}
    full = by_name.get(ANCHOR)
    adapters = [row for row in rows if row.name in ADAPTERS]
    trained = [row for row in rows if row.val]
    checks = []
    adapter = max((row for row in adapters if row.val), key=lambda row: row.val_mean, default=None)
    within = f"best adapter on val ({adapter.name if adapter else ' or '.join(ADAPTERS)}) within " \
             f"{WITHIN_POINTS:g} point of {ANCHOR}'s mean test Avg"
    fewer = f"its trainable parameters under 1/{PARAMETER_RATIO} of {ANCHOR}'s"
    waiting = [row.name for row in (*adapters, full) if row is not None and not row.complete]
    waiting += [name for name, missing in ((" or ".join(ADAPTERS), not adapters), (ANCHOR, full is None)) if missing]
    if waiting or adapter is None:
        checks += [_target(within, "pending", f"waiting for {', '.join(waiting)}"), _target(fewer, "pending", "")]
    else:
        gap = full.mean - adapter.mean
        checks.append(_target(within, "met" if gap <= WITHIN_POINTS else "missed",
                              f"{adapter.mean:.2f} vs {full.mean:.2f} (gap {gap:.2f})"))
        limit = full.trainable / PARAMETER_RATIO if full.trainable else None
        checks.append(_target(fewer, "pending", "trainable counts not recorded") if limit is None
                      or adapter.trainable is None else _target(
                          fewer, "met" if adapter.trainable < limit else "missed",
                          f"{adapter.trainable:,} vs {full.trainable:,} / {PARAMETER_RATIO} = {limit:,.0f}"))
    recipe = max(trained, key=lambda row: row.val_mean) if trained else None
    reach = f"best recipe on val ({recipe.name if recipe else 'none yet'}) at least {RECIPE_TARGET:g} test Avg"
    if recipe is None or not all(row.complete for row in trained):
        checks.append(_target(reach, "pending", "waiting for every method's seeds"))
    else:
        checks.append(_target(reach, "met" if recipe.mean >= RECIPE_TARGET else "missed", f"{recipe.mean:.2f}"))
    return checks


def _number(value: float | None, spec: str = ".2f") -> str:
    return "" if value is None else format(value, spec)


def markdown(rows: list[Row], tests: list[tuple[int, McNemar]], checks: list[dict], seeds: list[int]) -> str:
    lines = ["## Seeds at the chosen learning rate (test Avg, %)", "",
             "| method | lr | grid position | val mean | " + " | ".join(f"seed {s}" for s in seeds)
             + " | mean ± sd | n | trainable | train min (mean) |",
             "|---|---:|---|---:|" + "---:|" * len(seeds) + "---|---:|---:|---:|"]
    for row in rows:
        spread = "" if row.mean is None else f"{row.mean:.2f}" + ("" if row.sd is None else f" ± {row.sd:.2f}")
        cells = [_number(row.test.get(s)) for s in seeds]
        lines.append(f"| {row.name} | {'' if row.lr is None else f'{row.lr:g}'} | {row.position or ''} | "
                     f"{_number(row.val_mean)} | {' | '.join(cells)} | {spread} | {len(row.test)} | "
                     f"{_number(row.trainable, ',')} | {_number(row.train_min, '.1f')} |")
    lines += ["", "sd: sample standard deviation (n - 1) over the tested seeds; val: the run's best val accuracy.", "",
              f"## McNemar against {ANCHOR}, seed by seed (paired, same seed)", "",
              f"| method | seed | pairs | method right, {ANCHOR} wrong | method wrong, {ANCHOR} right | test | p |",
              "|---|---:|---:|---:|---:|---|---:|"]
    lines += [f"| {t.a} | {seed} | {t.n} | {t.only_a} | {t.only_b} | {t.method} | {t.p_value:.3g} |"
              for seed, t in tests]
    lines += ["", "## Targets (issue 25, item 5; chosen on val only)", "", "| target | value | status |",
              "|---|---|---|"]
    lines += [f"| {c['target']} | {c['value']} | {c['status']} |" for c in checks]
    return "\n".join(lines) + "\n"


def summarise(methods: list[MethodSeeds], problems_file: Path, seeds: list[int]) -> tuple[str, dict]:
    """(Markdown, JSON object) of the methods' seeds, their McNemar against full and the targets."""
    problems = read_problems(problems_file)
    built = [_row(method, problems, seeds) for method in methods if any(r.predictions for r in method.runs)]
    rows = [row for row, _ in built]
    tests = _paired(rows, {row.name: found for row, found in built}, problems, seeds)
    checks = targets(rows)
    data = {"seeds": seeds,
            "methods": [dataclasses.asdict(row) | {"mean": row.mean, "sd": row.sd, "val_mean": row.val_mean}
                        for row in rows],
            "mcnemar": [dataclasses.asdict(t) | {"seed": seed} for seed, t in tests], "targets": checks}
    return markdown(rows, tests, checks, seeds), data


def write_seeds(out: Path, methods: list[MethodSeeds], problems_file: Path, seeds: list[int]) -> str:
    """OUT/seeds.md and OUT/seeds.json; returns the Markdown."""
    text, data = summarise(methods, problems_file, seeds)
    atomic_write_text(out / "seeds.md", text)
    atomic_write_json(out / "seeds.json", data, indent=1)
    return text
