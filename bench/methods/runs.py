"""Training and testing each run of the comparison, every one through the library's own jobs (train scienceqa, eval
scienceqa) on equal terms, and each at most once: a finished run or test is kept, and refused when it was made with
other settings than this call's."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import yaml

from bench.methods.grid import Method
from bench.methods.lr_search import VAL_LOG, Search, best_val, finished, run_folder, search, tested
from mm_adapter.data.config import ScienceQASource
from mm_adapter.errors import MMAdapterError
from mm_adapter.eval.config import EvalConfig
from mm_adapter.eval.record import eval_record
from mm_adapter.jobs.configs.evaluation import EvalScienceQAConfig
from mm_adapter.jobs.configs.training import TrainScienceQAConfig
from mm_adapter.jobs.eval_scienceqa import eval_scienceqa
from mm_adapter.jobs.train_scienceqa import train_scienceqa
from mm_adapter.model.config import AdapterConfig, ModelOptions
from mm_adapter.training.checkpoints.format import checkpoint_dirs
from mm_adapter.training.config import TrainConfig
from mm_adapter.training.trainer import CHECKPOINTS

TRAIN_FORMAT = {f.name: f.default for f in dataclasses.fields(TrainScienceQAConfig)}["format"]


def train_config(args: argparse.Namespace, method: Method, lr: float, seed: int) -> TrainScienceQAConfig:
    folder = run_folder(args.out, method, lr, seed)
    return TrainScienceQAConfig(
        out=str(folder), source=ScienceQASource(data=str(args.data)), val_limit=args.val_limit,
        model=ModelOptions(base=args.base, dtype="bf16", threads=args.threads),
        adapter=AdapterConfig(adapter_len=args.adapter_len, adapter_layers=args.adapter_layers,
                              prompt_init="norm_scaled"),
        tuning=method.tuning,
        train=TrainConfig(epochs=args.epochs, warmup_epochs=0.3, lr=lr, batch_size=args.batch_size, seed=seed,
                          progress=not args.quiet, resume=bool(checkpoint_dirs(folder / CHECKPOINTS))))


# What makes two runs of one folder name the same run: a finished run trained otherwise (another --epochs, base,
# adapter size) is refused rather than reported as this call's.
SAME_RUN = ("val_limit", "model.base", "adapter.adapter_len", "adapter.adapter_layers", "tuning", "train.epochs",
            "train.batch_size", "train.lr", "train.seed")


def check_finished(folder: Path, wanted: TrainScienceQAConfig) -> None:
    recorded = yaml.safe_load((folder / "config.yaml").read_text()) if (folder / "config.yaml").is_file() else None
    if not isinstance(recorded, dict):
        return  # a run from before config.yaml: nothing to compare
    ours = dataclasses.asdict(wanted)
    for key in SAME_RUN:
        mine, theirs = ours, recorded
        for part in key.split("."):
            mine, theirs = mine[part], theirs.get(part) if isinstance(theirs, dict) else None
        if mine != theirs:
            raise MMAdapterError(f"{folder}: finished with {key} {theirs}, but this call trains {mine}; give the "
                                 "flags it was trained with, or another --out")


def train_one(args: argparse.Namespace, method: Method, lr: float, seed: int = 0, weights: bool = False) -> None:
    """Train one run into OUT unless it is finished there, or recorded (``--records``) and ``weights`` are not
    needed; a recorded run trained again prints whether its val log repeats the record's."""
    config = train_config(args, method, lr, seed)
    folder = Path(config.out)
    if finished(folder):
        check_finished(folder, config)
        return
    record = args.places.run(method, lr, seed)
    if args.places.recorded(record):
        check_finished(record, config)
        if not weights:
            return
    started = time.perf_counter()
    train_scienceqa(config)
    line = {"method": method.name, "lr": lr, "seed": seed, "best_val": best_val(folder)[0],
            "train_s": round(time.perf_counter() - started, 1)}
    if args.places.recorded(record):  # the search chose from the record: does training repeat it?
        same = (folder / VAL_LOG).read_text() == (record / VAL_LOG).read_text()
        line |= {"recorded": str(record), "same_val_log": same}
    print(json.dumps(line), flush=True)


def evaluate(args: argparse.Namespace, method: Method, out: Path, adapter: Path | None) -> tuple[float, float]:
    """Test Avg of ``adapter`` (None: the bare base, in the format the others train in) evaluated into ``out``, and
    the seconds it took."""
    started = time.perf_counter()
    result = eval_scienceqa(EvalScienceQAConfig(
        split="test", out=str(out), source=ScienceQASource(data=str(args.data)),
        adapter=None if adapter is None else str(adapter), name=method.name, progress=not args.quiet,
        model=ModelOptions(base=args.base, threads=args.threads),
        eval=EvalConfig(bf16=True, batch_size=16, format=TRAIN_FORMAT if adapter is None else None)))
    return result.scores["Avg"].acc, round(time.perf_counter() - started, 1)


def check_evaluated(folder: Path, run: Path) -> None:
    """A finished test of another run than the one now chosen (a grid widened after the test) is refused, not kept
    as if it were this choice's nor overwritten. Runs are told apart by folder name: a recorded test names its run
    where it was trained, on a machine that may be gone."""
    record = eval_record(folder)
    if record is not None and record.adapter is not None and record.adapter.parent.name != run.name:
        raise MMAdapterError(f"{folder}: it evaluated {record.adapter}, but the search now chooses {run}; move "
                             "the folder aside to test the new choice")


def test_chosen(args: argparse.Namespace, search_: Search, seed: int = 0) -> None:
    """Evaluate the chosen lr's run of ``seed`` on test, once (a recorded run is trained again for its weights)."""
    method, lr = search_.method, search_.chosen
    run = run_folder(args.out, method, lr, seed)
    test = args.places.test(method, seed)
    if tested(test):
        check_evaluated(test, run)
        return
    train_one(args, method, lr, seed, weights=True)
    val, adapter = best_val(run)
    avg, seconds = evaluate(args, method, test, adapter)
    print(json.dumps({"method": method.name, "chosen_lr": lr, "seed": seed, "val": val, "test_avg": avg,
                      "eval_s": seconds}), flush=True)


def zero_shot(args: argparse.Namespace, method: Method) -> None:
    out = args.places.test(method)
    if not tested(out):
        avg, seconds = evaluate(args, method, out, None)
        print(json.dumps({"method": method.name, "test_avg": avg, "eval_s": seconds}), flush=True)


def run_method(args: argparse.Namespace, method: Method) -> None:
    """The search (unless `--seed N` > 0), its test, then each further seed's run and test (unless `--lr`: a search
    worker)."""
    if method.tuning is None:
        if args.seed in (None, 0):
            zero_shot(args, method)
        return
    if args.seed in (None, 0):
        for lr in method.lrs:
            if args.lr is None or lr == args.lr:
                train_one(args, method, lr)
    found = search(args.places, method)
    if found.chosen is None:
        return
    if args.seed in (None, 0):
        test_chosen(args, found)
    if args.lr is not None:
        return
    for seed in args.seeds:
        if seed > 0 and args.seed in (None, seed):
            train_one(args, method, found.chosen, seed)
            test_chosen(args, found, seed)
