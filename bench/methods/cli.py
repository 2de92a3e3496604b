"""The comparison's flags, every bad one refused in one line before anything is trained or written, and the order of
the work: the grids recorded, each method's runs and tests, then the reports."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import bench.methods as package
from bench.methods.grid import METHODS, record_grids, with_grids
from bench.methods.lr_search import Places
from bench.methods.reports import write_tables
from bench.methods.runs import run_method
from mm_adapter.errors import MMAdapterError
from mm_adapter.model.base import DEFAULT_SPEC
from mm_adapter.model.base_spec import decoder_layers
from mm_adapter.model.family import text_config
from mm_adapter.training.memory_plan import architecture

MAX_ADAPTER_LAYERS = 30  # all of SmolLM2-135M's layers; a shallower base gets all of its own
PROG = "python -m bench.methods"  # how it is run: its usage and error lines say so


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
    """Decoder layers of the base, counted as `train scienceqa` counts them before loading (``decoder_layers``: a
    GGUF's tensor names, a folder's config); a hub id or Meta folder from its config (no weights loaded)."""
    layers = decoder_layers(spec)
    return layers if layers is not None else text_config(architecture(spec).config).num_hidden_layers


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):
        """One line naming the flag, exit 2, as every mm-adapter refusal (the usage is --help's)."""
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The flags, every bad one refused in one line (exit 2) before anything is trained or written."""
    parser = OneLineParser(prog=PROG, description=package.__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="official-layout ScienceQA folder")
    parser.add_argument("--out", type=Path, required=True, help="folder of every run and test evaluation")
    parser.add_argument("--records", type=Path, nargs="+", default=[],
                        help="folders of earlier runs' records (python -m bench.methods.records), read in order for "
                             "the runs and tests OUT lacks; a recorded run is trained again only for its test")
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
    for folder in args.records:
        if not folder.is_dir():
            parser.error(f"--records {folder}: not a folder")
        if folder.resolve() == args.out.resolve():
            parser.error(f"--records {folder}: is --out itself; records are a folder of their own")
    args.places = Places(args.out, tuple(args.records))
    args.methods = with_grids(args.out, [m for m in METHODS if not args.only or m.name in args.only], args.grid,
                              args.records)
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
