"""The official ScienceQA accuracy breakdown, with intervals and paired significance tests.

Columns (Lu et al. 2022): NAT/SOC/LAN by subject, TXT = non-empty hint, IMG = has an image,
NO = neither, G1-6/G7-12 by grade, Avg = all. A column over a metadata field that is null on
some problems is computed over the problems that have it, and says how many did not (`unknown`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from mm_adapter.scienceqa.data import Problem
from mm_adapter.scienceqa.predictions import NO_ANSWER, Predictions, check_predictions

LOW_GRADES = frozenset(f"grade{g}" for g in range(1, 7))
HIGH_GRADES = frozenset(f"grade{g}" for g in range(7, 13))


@dataclass(frozen=True)
class Column:
    name: str
    field: str | None  # the Problem field it needs (may be null), None when always known
    member: Callable[[Problem], bool]


COLUMNS = (
    Column("NAT", "subject", lambda p: p.subject == "natural science"),
    Column("SOC", "subject", lambda p: p.subject == "social science"),
    Column("LAN", "subject", lambda p: p.subject == "language science"),
    Column("TXT", None, lambda p: p.has_context),
    Column("IMG", None, lambda p: p.has_image),
    Column("NO", None, lambda p: p.no_context),
    Column("G1-6", "grade", lambda p: p.grade in LOW_GRADES),
    Column("G7-12", "grade", lambda p: p.grade in HIGH_GRADES),
    Column("Avg", None, lambda p: True),
)
COLUMN_NAMES = tuple(c.name for c in COLUMNS)


def percent(correct: float, n: float) -> float | None:
    """Accuracy in percent, 2 decimals as published; None for an empty column."""
    return round(100.0 * correct / n, 2) if n else None


@dataclass(frozen=True)
class ColumnScore:
    name: str
    correct: int
    n: int  # problems behind the column
    unknown: int = 0  # scored problems whose field is null, hence left out of this column
    ci: tuple[float, float] | None = None  # bootstrap interval, percent

    @property
    def acc(self) -> float | None:
        return percent(self.correct, self.n)

    @property
    def partial(self) -> bool:
        return self.unknown > 0


@dataclass(frozen=True)
class Scores:
    """One method's table row. `missing`: pids of its split it did not predict (not scored)."""

    name: str
    columns: dict[str, ColumnScore]
    scored: int
    no_answer: int = 0
    missing: tuple[str, ...] = field(default=(), repr=False)

    def __getitem__(self, column: str) -> ColumnScore:
        return self.columns[column]


def column_masks(problems: Sequence[Problem]) -> tuple[np.ndarray, np.ndarray]:
    """Boolean (problems x columns) matrices: `member` (in the column) and `known` (field not null)."""
    shape = (len(problems), len(COLUMNS))
    known = np.array([[c.field is None or getattr(p, c.field) is not None for c in COLUMNS] for p in problems], bool)
    member = np.array([[c.member(p) for c in COLUMNS] for p in problems], bool)
    known, member = known.reshape(shape), member.reshape(shape)
    return member & known, known


def correctness(predictions: Predictions, problems: Mapping[str, Problem]) -> tuple[list[str], np.ndarray]:
    """The predicted pids and whether each prediction is right (-1, no answer, is wrong)."""
    pids = list(predictions.results)
    predicted = np.array([predictions.results[p] for p in pids], dtype=int)
    gold = np.array([problems[p].answer for p in pids], dtype=int)
    return pids, predicted == gold


def bootstrap_ci(
    correct: np.ndarray, member: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> np.ndarray:
    """Percentile bootstrap interval (percent) of each column's accuracy, shape (columns, 2).

    Resampling a column's n right/wrong outcomes with replacement makes its number right
    Binomial(n, accuracy); drawing that directly is the same bootstrap, vectorised over columns.
    """
    n = member.sum(axis=0)
    acc = np.divide((member & correct[:, None]).sum(axis=0), n, out=np.zeros(len(n)), where=n > 0)
    draws = np.random.default_rng(seed).binomial(n[:, None], acc[:, None], size=(len(n), n_boot))
    rates = 100.0 * draws / np.maximum(n, 1)[:, None]
    tail = 100.0 * (1 - level) / 2
    bounds = np.percentile(rates, [tail, 100 - tail], axis=1).T
    bounds[n == 0] = np.nan
    return np.round(bounds, 2)


def score(
    predictions: Predictions, problems: Mapping[str, Problem], n_boot: int = 0, seed: int = 0
) -> Scores:
    """The table row of `predictions` over the pids it covers (validated against `problems`)."""
    missing = check_predictions(predictions, problems)
    pids, correct = correctness(predictions, problems)
    member, known = column_masks([problems[p] for p in pids])
    right = (member & correct[:, None]).sum(axis=0)
    counts, unknown = member.sum(axis=0), (~known).sum(axis=0)
    cis = bootstrap_ci(correct, member, n_boot, seed) if n_boot else None
    columns = {
        c.name: ColumnScore(
            c.name, int(right[i]), int(counts[i]), int(unknown[i]),
            None if cis is None or np.isnan(cis[i]).any() else (float(cis[i, 0]), float(cis[i, 1])),
        )
        for i, c in enumerate(COLUMNS)
    }
    no_answer = sum(v == NO_ANSWER for v in predictions.results.values())
    return Scores(predictions.name, columns, len(pids), no_answer, tuple(missing))


@dataclass(frozen=True)
class McNemar:
    """Paired test on the pids both methods predicted. `only_a`: a right and b wrong."""

    a: str
    b: str
    n: int
    only_a: int
    only_b: int
    p_value: float
    method: str  # "exact binomial" (discordant < 25) or "chi-square, continuity corrected"
    statistic: float | None = None


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray, a: str = "a", b: str = "b") -> McNemar:
    """McNemar's test: exact binomial when fewer than 25 discordant pairs, else chi-square with
    continuity correction (the usual rule: the chi-square approximation needs enough pairs)."""
    from scipy import stats

    correct_a, correct_b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    only_a, only_b = int((correct_a & ~correct_b).sum()), int((~correct_a & correct_b).sum())
    discordant = only_a + only_b
    if discordant < 25:
        p = stats.binomtest(only_a, discordant, 0.5).pvalue if discordant else 1.0
        return McNemar(a, b, len(correct_a), only_a, only_b, float(p), "exact binomial")
    statistic = (abs(only_a - only_b) - 1) ** 2 / discordant
    p = stats.chi2.sf(statistic, df=1)
    return McNemar(a, b, len(correct_a), only_a, only_b, float(p), "chi-square, continuity corrected", float(statistic))


def compare(a: Predictions, b: Predictions, problems: Mapping[str, Problem]) -> McNemar:
    """McNemar between two prediction sets on their common pids."""
    common = [p for p in a.results if p in b.results]
    gold = np.array([problems[p].answer for p in common], dtype=int)
    right_a = np.array([a.results[p] for p in common], dtype=int) == gold
    right_b = np.array([b.results[p] for p in common], dtype=int) == gold
    return mcnemar(right_a, right_b, a.name, b.name)


def confusion_by(
    predictions: Predictions, problems: Mapping[str, Problem], by: str = "category"
) -> dict[str, np.ndarray]:
    """Per-group confusion counts: for each value of the Problem field `by` (None -> "unknown"),
    a (K, K+1) matrix of gold index (rows) x predicted index (cols; the last col is -1, no answer)."""
    pids = list(predictions.results)
    groups = np.array([str(getattr(problems[p], by) or "unknown") for p in pids])
    gold = np.array([problems[p].answer for p in pids], dtype=int)
    predicted = np.array([predictions.results[p] for p in pids], dtype=int)
    k = max((len(problems[p].choices) for p in pids), default=0)
    names, group_index = np.unique(groups, return_inverse=True)
    counts = np.zeros((len(names), k, k + 1), dtype=int)
    np.add.at(counts, (group_index, gold, np.where(predicted == NO_ANSWER, k, predicted)), 1)
    return {str(name): counts[i] for i, name in enumerate(names)}
