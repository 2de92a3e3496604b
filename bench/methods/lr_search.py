"""The learning-rate search as it stands in OUT and its records, read from the run folders alone (no state of its
own, so two workers and a later call see the same): where each run and test lives, which are finished, each lr's
best val, and the choice with whether it is interior to its grid."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from bench.methods.grid import Method

INTERIOR, EDGE = "interior", "edge: widen"
VAL_LOG, PREDICTIONS = "validation.jsonl", "predictions.json"  # a run's val per validation; a test's answers
_LR_TEXT = r"(?P<lr>\d[\d.]*(?:e[-+]\d+)?)"


def run_folder(out: Path, method: Method, lr: float, seed: int = 0) -> Path:
    """Seed 0's name is issue 14's, unchanged: runs started before seeds existed are picked up as they are."""
    return out / (f"{method.name}-lr{lr:g}" + (f"-seed{seed}" if seed else ""))


def test_folder(out: Path, method: Method, seed: int = 0) -> Path:
    """``-seed{N}`` after ``-test``, so ``OUT/*-test`` (the hand-made table's glob) stays one row per method."""
    return out / (f"{method.name}-test" + (f"-seed{seed}" if seed else ""))


TEST_NAME = re.compile(r".+-test(?:-seed\d+)?")  # test_folder's names: the folders that hold a test, not a run


def finished(folder: Path) -> bool:
    """A run is done when its last adapter exists (ours: a file; other methods: a folder)."""
    return (folder / "adapter.safetensors").is_file() or (folder / "adapter").is_dir()


def tested(folder: Path) -> bool:
    return (folder / PREDICTIONS).is_file()


def best_val(folder: Path) -> tuple[float, Path]:
    """The run's best val accuracy and its best checkpoint (validation.jsonl is written at each validation)."""
    rows = [json.loads(line) for line in (folder / VAL_LOG).read_text().splitlines() if line.strip()]
    best = max(row["val_acc"] for row in rows)
    path = folder / "best.safetensors"
    return best, path if path.is_file() else folder / "best"


def tried_lrs(out: Path, method: Method) -> set[float]:
    """The seed-0 learning rates with a run folder in OUT: a grid widened by an earlier `--grid` stays searched."""
    pattern = re.compile(re.escape(method.name) + "-lr" + _LR_TEXT)
    found = set()
    for folder in out.glob(f"{method.name}-lr*"):
        match = pattern.fullmatch(folder.name)
        if match and f"{float(match['lr']):g}" == match["lr"]:
            found.add(float(match["lr"]))
    return found


@dataclass(frozen=True)
class Places:
    """Where a comparison's runs and tests are read: OUT, then each records folder (``bench.methods.records``) in
    turn, for a run or test that OUT does not hold finished (the machine it ran on is gone). Training and testing
    write to OUT only; a recorded run counts as finished for the search, and is trained again into OUT only when its
    weights are needed (its test)."""

    out: Path
    records: tuple[Path, ...] = ()

    @property
    def roots(self) -> tuple[Path, ...]:
        return (self.out, *self.records)

    def run(self, method: Method, lr: float, seed: int = 0) -> Path:
        """OUT's run folder when it is finished, else the first record of it, else OUT's (to train, or training)."""
        name = run_folder(self.out, method, lr, seed).name
        if finished(self.out / name):
            return self.out / name
        return next((root / name for root in self.records if (root / name / VAL_LOG).is_file()), self.out / name)

    def test(self, method: Method, seed: int = 0) -> Path:
        name = test_folder(self.out, method, seed).name
        return next((root / name for root in self.roots if tested(root / name)), self.out / name)

    def recorded(self, folder: Path) -> bool:
        """Whether ``folder`` is a record (finished when recorded, its weights left behind) rather than OUT's."""
        return folder.parent != self.out

    def tried_lrs(self, method: Method) -> set[float]:
        return set().union(*(tried_lrs(root, method) for root in self.roots))


@dataclass(frozen=True)
class Search:
    """One method's seed-0 search as it stands in OUT: the grid (given and tried, ascending), each lr's best val."""

    method: Method
    lrs: tuple[float, ...]
    val: dict[float, float]  # lrs with a validation so far
    done: bool  # every lr of the grid trained to the end

    @property
    def chosen(self) -> float | None:
        """The best-val lr once the whole grid is trained (a tie goes to the smaller lr)."""
        return max(self.lrs, key=lambda lr: self.val[lr]) if self.done and self.lrs else None

    @property
    def position(self) -> str | None:
        """Whether the chosen lr has a grid point on both sides; at an edge the best may lie beyond the grid."""
        if self.chosen is None:
            return None
        return EDGE if self.chosen in (self.lrs[0], self.lrs[-1]) else INTERIOR


def search(places: Places, method: Method) -> Search:
    lrs = tuple(sorted(set(method.lrs) | places.tried_lrs(method)))
    folders = {lr: places.run(method, lr) for lr in lrs}
    val = {lr: best_val(folder)[0] for lr, folder in folders.items() if (folder / VAL_LOG).is_file()}
    return Search(method, lrs, val, all(finished(f) or places.recorded(f) for f in folders.values()))
