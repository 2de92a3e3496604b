"""LLaMA-Adapter against the other ways to adapt the same model, on equal terms (issue 14 item 1, issue 25 item 4).

Every method trains on the same ScienceQA train split, prompt format, epochs, batch and schedule through the one
`train scienceqa` job, at seed 0, over a learning-rate grid (GRIDS below, or `--grid`), chosen on val: the best
checkpoint of the best lr. The chosen run is evaluated on test once; `zero-shot` is the base itself, evaluated on
test with no training. With `--seeds 0 1 2` the chosen lr is then trained again with each further seed (seed 0 is
the search run itself) and each seed's run is evaluated on test once. Resumable: a run whose final adapter exists
is not trained again, a finished test evaluation is not redone. Two workers share the work on two cores: by
method (`--only`), by search lr (`--lr`: this value of the grid only; whoever finishes the search last tests it)
or by seed (`--seed N`: only seed N's run and test; `--seed 0`: only the search).

    python -m bench.methods --data ../shared/data/scienceqa --out runs/methods --threads 1 --only llama-adapter lora

Prints one JSON line per run (method, lr, seed, best val accuracy, train seconds) and per test evaluation, then the
table of every method's seed-0 test so far (OUT/table.md, .json, .png, and costs.png: Avg against trainable
parameters), the same as the command below; the val of each lr tried, with whether the choice is interior to its
grid (OUT/search.md); and the seeds summary (OUT/seeds.md, .json: `bench/seeds.py`):

    mm-adapter table runs/methods/*-test --problems ../shared/data/scienceqa/problems.json --bootstrap 1000 \\
        --mcnemar-against llama-adapter --costs --plot runs/methods/table.png --json runs/methods/table.json \\
        --cost-plot runs/methods/costs.png
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from bench.seeds import MethodSeeds, SeedRun, write_seeds
from mm_adapter.data.config import ScienceQASource
from mm_adapter.errors import MMAdapterError
from mm_adapter.eval.config import EvalConfig, TableConfig
from mm_adapter.eval.record import eval_record
from mm_adapter.eval.table import build_table
from mm_adapter.files.atomic import atomic_write_json, atomic_write_text
from mm_adapter.jobs.configs.evaluation import EvalScienceQAConfig
from mm_adapter.jobs.configs.training import TrainScienceQAConfig
from mm_adapter.jobs.eval_scienceqa import eval_scienceqa
from mm_adapter.jobs.train_scienceqa import train_scienceqa
from mm_adapter.methods.config import TuningConfig
from mm_adapter.model.base import DEFAULT_SPEC, converted_folder
from mm_adapter.model.config import AdapterConfig, ModelOptions
from mm_adapter.model.family import text_config
from mm_adapter.training.config import TrainConfig
from mm_adapter.training.memory_plan import architecture


@dataclass(frozen=True)
class Method:
    name: str  # the run's name in folders and tables
    tuning: TuningConfig | None  # None: zero-shot, the base evaluated with no training
    lrs: tuple[float, ...]  # the search grid, ascending


# At least three points each, so the chosen value can be interior (issue 25). Parameter-efficient methods share one
# grid around ours (5e-3 and 1e-2 were issue 14's, where 1e-2 won at the top edge); LoRA's update is a product of two
# matrices and full fine-tuning moves every weight, so theirs are the usual decades lower.
GRIDS = {"prompt": (5e-3, 1e-2, 2e-2, 4e-2), "lora": (5e-4, 2e-3, 5e-3, 1e-2), "full": (1e-5, 5e-5, 1e-4)}
ZERO_SHOT = "zero-shot"
METHODS = (
    Method(ZERO_SHOT, None, ()),
    Method("llama-adapter", TuningConfig(), GRIDS["prompt"]),
    Method("llama-adapter-v2", TuningConfig(method="llama-adapter-v2"), GRIDS["prompt"]),
    Method("peft-adaption-prompt", TuningConfig(method="peft-adaption-prompt"), GRIDS["prompt"]),
    Method("lora", TuningConfig(method="lora"), GRIDS["lora"]),
    Method("lora-r16-all", TuningConfig(method="lora", lora_rank=16, lora_targets="all-linear"), GRIDS["lora"]),
    Method("prompt-tuning", TuningConfig(method="prompt-tuning"), GRIDS["prompt"]),
    Method("prefix-tuning", TuningConfig(method="prefix-tuning"), GRIDS["prompt"]),
    Method("full", TuningConfig(method="full"), GRIDS["full"]),
)
TRAIN_FORMAT = {f.name: f.default for f in dataclasses.fields(TrainScienceQAConfig)}["format"]
MAX_ADAPTER_LAYERS = 30  # all of SmolLM2-135M's layers; a shallower base gets all of its own
INTERIOR, EDGE = "interior", "edge: widen"
GRID_FILE = "grids.json"  # OUT's searched grid per method: what `--grid` widened stays the grid for every worker
_LR_TEXT = r"(?P<lr>\d[\d.]*(?:e[-+]\d+)?)"


def run_folder(out: Path, method: Method, lr: float, seed: int = 0) -> Path:
    """Seed 0's name is issue 14's, unchanged: runs started before seeds existed are picked up as they are."""
    return out / (f"{method.name}-lr{lr:g}" + (f"-seed{seed}" if seed else ""))


def test_folder(out: Path, method: Method, seed: int = 0) -> Path:
    """``-seed{N}`` after ``-test``, so ``OUT/*-test`` (the hand-made table's glob) stays one row per method."""
    return out / (f"{method.name}-test" + (f"-seed{seed}" if seed else ""))


def finished(folder: Path) -> bool:
    """A run is done when its last adapter exists (ours: a file; other methods: a folder)."""
    return (folder / "adapter.safetensors").is_file() or (folder / "adapter").is_dir()


def tested(folder: Path) -> bool:
    return (folder / "predictions.json").is_file()


def best_val(folder: Path) -> tuple[float, Path]:
    """The run's best val accuracy and its best checkpoint (validation.jsonl is written at each validation)."""
    rows = [json.loads(line) for line in (folder / "validation.jsonl").read_text().splitlines() if line.strip()]
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


def recorded_grids(out: Path) -> dict[str, list[float]]:
    path = out / GRID_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def with_grids(out: Path, chosen: list[Method], given: tuple[float, ...] | None) -> list[Method]:
    """``chosen`` with each trained method's grid: `--grid` (else the one OUT records, else GRIDS), joined with the
    one OUT records, so a grid can be widened and never narrowed by a later call or the other worker."""
    recorded = recorded_grids(out)
    return [dataclasses.replace(m, lrs=tuple(sorted(set(given or recorded.get(m.name) or m.lrs)
                                                    | set(recorded.get(m.name, ())))))
            if m.tuning else m for m in chosen]


def record_grids(out: Path, methods: list[Method]) -> None:
    """OUT/grids.json gets this call's grids (joined with those recorded), before anything is trained."""
    recorded = recorded_grids(out)
    grids = recorded | {m.name: sorted(set(m.lrs) | set(recorded.get(m.name, ()))) for m in methods if m.tuning}
    if grids != recorded:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / GRID_FILE, grids, indent=1)


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


def search(out: Path, method: Method) -> Search:
    lrs = tuple(sorted(set(method.lrs) | tried_lrs(out, method)))
    folders = {lr: run_folder(out, method, lr) for lr in lrs}
    val = {lr: best_val(folder)[0] for lr, folder in folders.items() if (folder / "validation.jsonl").is_file()}
    return Search(method, lrs, val, all(finished(folder) for folder in folders.values()))


def train_config(args: argparse.Namespace, method: Method, lr: float, seed: int) -> TrainScienceQAConfig:
    folder = run_folder(args.out, method, lr, seed)
    return TrainScienceQAConfig(
        out=str(folder), source=ScienceQASource(data=str(args.data)), val_limit=args.val_limit,
        model=ModelOptions(base=args.base, dtype="bf16", threads=args.threads),
        adapter=AdapterConfig(adapter_len=args.adapter_len, adapter_layers=args.adapter_layers,
                              prompt_init="norm_scaled"),
        tuning=method.tuning,
        train=TrainConfig(epochs=args.epochs, warmup_epochs=0.3, lr=lr, batch_size=args.batch_size, seed=seed,
                          progress=not args.quiet, resume=any((folder / "checkpoints").glob("step-*"))))


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


def train_one(args: argparse.Namespace, method: Method, lr: float, seed: int = 0) -> None:
    config = train_config(args, method, lr, seed)
    folder = Path(config.out)
    if finished(folder):
        check_finished(folder, config)
        return
    started = time.perf_counter()
    train_scienceqa(config)
    print(json.dumps({"method": method.name, "lr": lr, "seed": seed, "best_val": best_val(folder)[0],
                      "train_s": round(time.perf_counter() - started, 1)}), flush=True)


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


def check_evaluated(folder: Path, adapter: Path) -> None:
    """A finished test of another adapter than the one now chosen (a grid widened after the test) is refused, not
    kept as if it were this choice's nor overwritten."""
    record = eval_record(folder)
    if record is not None and record.adapter is not None and record.adapter.resolve() != adapter.resolve():
        raise MMAdapterError(f"{folder}: it evaluated {record.adapter}, but the search now chooses {adapter}; move "
                             "the folder aside to test the new choice")


def test_chosen(args: argparse.Namespace, search_: Search, seed: int = 0) -> None:
    """Evaluate the chosen lr's run of ``seed`` on test, once."""
    method, lr = search_.method, search_.chosen
    val, adapter = best_val(run_folder(args.out, method, lr, seed))
    out = test_folder(args.out, method, seed)
    if tested(out):
        check_evaluated(out, adapter)
        return
    avg, seconds = evaluate(args, method, out, adapter)
    print(json.dumps({"method": method.name, "chosen_lr": lr, "seed": seed, "val": val, "test_avg": avg,
                      "eval_s": seconds}), flush=True)


def zero_shot(args: argparse.Namespace, method: Method) -> None:
    out = test_folder(args.out, method)
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
    found = search(args.out, method)
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


def lr_grid(text: str) -> tuple[float, ...]:
    """`--grid 1e-3,5e-3,1e-2`: positive, distinct, returned ascending."""
    try:
        values = [float(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of learning rates such as 5e-3,1e-2,2e-2"
                                         ) from None
    if not values:
        raise argparse.ArgumentTypeError("empty: give a comma list of learning rates such as 5e-3,1e-2,2e-2")
    bad = next((v for v in values if not (math.isfinite(v) and v > 0)), None)
    if bad is not None:
        raise argparse.ArgumentTypeError(f"learning rate {bad:g} is not a positive number")
    if len(set(values)) < len(values):
        raise argparse.ArgumentTypeError(f"{text!r} repeats a learning rate")
    return tuple(sorted(values))


def seed_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; seeds are 0, 1, 2, ...")
    return value


def base_layers(spec: str) -> int:
    """Decoder layers of the base, from its config.json (no weights loaded; a GGUF spec is converted once, as
    training would first do anyway)."""
    folder = converted_folder(spec)
    return text_config(architecture(str(folder) if folder else spec).config).num_hidden_layers


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):
        """One line naming the flag, exit 2, as every mm-adapter refusal (the usage is --help's)."""
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The flags, every bad one refused in one line (exit 2) before anything is trained or written."""
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="official-layout ScienceQA folder")
    parser.add_argument("--out", type=Path, required=True, help="folder of every run and test evaluation")
    parser.add_argument("--only", nargs="+", choices=[m.name for m in METHODS], help="run these methods only")
    parser.add_argument("--base", default=DEFAULT_SPEC, help="base model (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--adapter-len", type=int, default=10, help="prompts per layer (and PEFT's prompt methods')")
    parser.add_argument("--adapter-layers", type=int, help=f"adapted layers (default: all of the base's, at most "
                                                           f"{MAX_ADAPTER_LAYERS}; SmolLM2 30, Gemma-3-270m 18)")
    parser.add_argument("--val-limit", type=int, default=None, help="first N val problems choose (None: all)")
    parser.add_argument("--grid", type=lr_grid, help="comma list of learning rates searched for the chosen methods "
                                                     "(default: GRIDS of the method's kind)")
    parser.add_argument("--lr", type=float, help="train only this learning rate of each method's grid")
    parser.add_argument("--seeds", nargs="+", type=seed_number, default=[0],
                        help="seeds of the chosen lr, 0 first (the search run); e.g. 0 1 2")
    parser.add_argument("--seed", type=seed_number, help="run only this seed of --seeds (0: the search)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    if not (args.data / "problems.json").is_file():
        parser.error(f"--data {args.data}: no problems.json there (the official ScienceQA layout)")
    if len(set(args.seeds)) < len(args.seeds):
        parser.error(f"--seeds {' '.join(map(str, args.seeds))} repeats a seed")
    if 0 not in args.seeds:
        parser.error("--seeds must include 0: seed 0 is the search run the lr is chosen from")
    if args.seed is not None and args.seed not in args.seeds:
        parser.error(f"--seed {args.seed} is not one of --seeds ({' '.join(map(str, args.seeds))})")
    if args.seed and args.lr is not None:
        parser.error(f"--lr trains a search lr at seed 0; --seed {args.seed} trains the chosen lr: give one of them")
    args.methods = with_grids(args.out, [m for m in METHODS if not args.only or m.name in args.only], args.grid)
    if args.grid and not any(m.tuning for m in args.methods):
        parser.error("--grid: none of the chosen methods trains (zero-shot has no learning rate)")
    if args.lr is not None and not any(args.lr in m.lrs for m in args.methods):
        grids = ", ".join(sorted({f"{lr:g}" for m in args.methods for lr in m.lrs}))
        parser.error(f"--lr {args.lr:g} is in no chosen method's grid ({grids})")
    try:
        layers = base_layers(args.base)
    except MMAdapterError as error:
        parser.error(f"--base {args.base}: {error}")
    if args.adapter_layers is None:
        args.adapter_layers = min(MAX_ADAPTER_LAYERS, layers)
    elif not 1 <= args.adapter_layers <= layers:
        parser.error(f"--adapter-layers {args.adapter_layers}: the base {args.base} has {layers} decoder layers")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        if args.seed in (None, 0):
            record_grids(args.out, args.methods)
        for method in args.methods:
            run_method(args, method)
        write_tables(args)
    except MMAdapterError as error:  # a locked or refused folder, bad data: one line, what was written is kept
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def search_table(out: Path) -> str:
    """The learning-rate search as Markdown: each method's best val accuracy at each lr of its grid (the chosen
    one in bold) and whether the chosen lr is interior to the grid, for every run with a validation so far."""
    lines = ["| method | val per lr (%) | chosen lr | grid position |", "|---|---|---|---|"]
    for method in with_grids(out, list(METHODS), None):
        found = search(out, method)
        if not found.val:
            continue
        cells = [f"{lr:g}: " + ("(not trained)" if lr not in found.val else
                                f"**{100 * found.val[lr]:.2f}**" if lr == found.chosen else f"{100 * found.val[lr]:.2f}")
                 for lr in found.lrs]
        chosen = "" if found.chosen is None else f"{found.chosen:g}"
        lines.append(f"| {method.name} | {', '.join(cells)} | {chosen} | {found.position or 'search not finished'} |")
    return "\n".join(lines) + "\n"


def write_tables(args: argparse.Namespace) -> None:
    """The comparison table of every method's seed-0 test in OUT (all of METHODS, not only --only's): bootstrap
    intervals, McNemar of each against llama-adapter, the cost columns, two charts; OUT/table.md, .json, .png and
    costs.png. OUT/search.md is the learning-rate search (val per lr), OUT/seeds.md and .json the seeds summary."""
    atomic_write_text(args.out / "search.md", search_table(args.out))
    done = [str(test_folder(args.out, m)) for m in METHODS if tested(test_folder(args.out, m))]
    if not done:
        return
    ours = "llama-adapter" if tested(args.out / "llama-adapter-test") else None
    table = build_table(TableConfig(
        predictions=done, problems=str(args.data), bootstrap=1000, mcnemar_against=ours, costs=True,
        markdown=str(args.out / "table.md"), json=str(args.out / "table.json"), plot=str(args.out / "table.png"),
        cost_plot=str(args.out / "costs.png"),
        title="ScienceQA test, methods on equal terms"))
    print(table.markdown, flush=True)
    runs = seed_runs(args.out, args.seeds)
    seeds = sorted(set(args.seeds) | {run.seed for method in runs for run in method.runs})
    print(write_seeds(args.out, runs, args.data / "problems.json", seeds), flush=True)


def seed_runs(out: Path, seeds: list[int]) -> list[MethodSeeds]:
    """Every method with a finished search in OUT and its runs at the chosen lr, for the seeds summary: the seeds
    asked for and any other found on disk (a finished seed is never left out of the mean)."""
    found = []
    for method in with_grids(out, list(METHODS), None):
        if method.tuning is None:
            folder = test_folder(out, method)
            found.append(MethodSeeds(method.name, None, None, (SeedRun(0, None, folder / "predictions.json"
                                                                       if tested(folder) else None),)))
            continue
        result = search(out, method)
        if result.chosen is None:
            continue
        on_disk = {int(p.name.rsplit("seed", 1)[1]) for p in out.glob(f"{method.name}-lr{result.chosen:g}-seed*")
                   if re.fullmatch(r"\d+", p.name.rsplit("seed", 1)[1])}
        runs = []
        for seed in sorted(set(seeds) | on_disk):
            run, test = run_folder(out, method, result.chosen, seed), test_folder(out, method, seed)
            runs.append(SeedRun(seed, best_val(run)[0] if (run / "validation.jsonl").is_file() else None,
                                test / "predictions.json" if tested(test) else None))
        found.append(MethodSeeds(method.name, result.chosen, result.position, tuple(runs)))
    return found


if __name__ == "__main__":
    sys.exit(main())
