"""What the comparison writes to OUT after its runs, every number read from the run folders: the learning-rate search
(search.md), the comparison table of every method's seed-0 test (table.md, .json, .png, costs.png) and the seeds
summary (seeds.md, .json, through ``seeds``)."""

from __future__ import annotations

import argparse
import re

from bench.methods.grid import METHODS, with_grids
from bench.methods.lr_search import PREDICTIONS, VAL_LOG, Places, best_val, search, tested
from bench.methods.seeds import MethodSeeds, SeedRun, write_seeds
from mm_adapter.eval.config import TableConfig
from mm_adapter.eval.table import build_table
from mm_adapter.files.atomic import atomic_write_text


def search_table(places: Places) -> str:
    """The learning-rate search as Markdown: each method's best val accuracy at each lr of its grid (the chosen
    one in bold) and whether the chosen lr is interior to the grid, for every run with a validation so far."""
    lines = ["| method | val per lr (%) | chosen lr | grid position |", "|---|---|---|---|"]
    for method in with_grids(places.out, list(METHODS), None, places.records):
        found = search(places, method)
        if not found.val:
            continue
        percent = {lr: f"{100 * val:.2f}" for lr, val in found.val.items()}
        cells = [f"{lr:g}: " + ("(not trained)" if lr not in found.val else
                                f"**{percent[lr]}**" if lr == found.chosen else percent[lr]) for lr in found.lrs]
        chosen = "" if found.chosen is None else f"{found.chosen:g}"
        lines.append(f"| {method.name} | {', '.join(cells)} | {chosen} | {found.position or 'search not finished'} |")
    return "\n".join(lines) + "\n"


def write_tables(args: argparse.Namespace) -> None:
    """The comparison table of every method's seed-0 test in OUT (all of METHODS, not only --only's): bootstrap
    intervals, McNemar of each against llama-adapter, the cost columns, two charts; OUT/table.md, .json, .png and
    costs.png. OUT/search.md is the learning-rate search (val per lr), OUT/seeds.md and .json the seeds summary."""
    places: Places = args.places
    atomic_write_text(args.out / "search.md", search_table(places))
    done = {m.name: str(places.test(m)) for m in METHODS if tested(places.test(m))}
    if not done:
        return
    ours = "llama-adapter" if "llama-adapter" in done else None
    table = build_table(TableConfig(
        predictions=list(done.values()), problems=str(args.data), bootstrap=1000, mcnemar_against=ours, costs=True,
        markdown=str(args.out / "table.md"), json=str(args.out / "table.json"), plot=str(args.out / "table.png"),
        cost_plot=str(args.out / "costs.png"),
        title="ScienceQA test, methods on equal terms"))
    print(table.markdown, flush=True)
    runs = seed_runs(places, args.seeds)
    seeds = sorted(set(args.seeds) | {run.seed for method in runs for run in method.runs})
    print(write_seeds(args.out, runs, args.data / "problems.json", seeds), flush=True)


def seed_runs(places: Places, seeds: list[int]) -> list[MethodSeeds]:
    """Every method with a finished search in OUT (and its records) and its runs at the chosen lr, for the seeds
    summary: the seeds asked for and any other found there (a finished seed is never left out of the mean)."""
    found = []
    for method in with_grids(places.out, list(METHODS), None, places.records):
        if method.tuning is None:
            folder = places.test(method)
            found.append(MethodSeeds(method.name, None, None, (SeedRun(0, None, folder / PREDICTIONS
                                                                       if tested(folder) else None),)))
            continue
        result = search(places, method)
        if result.chosen is None:
            continue
        on_disk = {int(p.name.rsplit("seed", 1)[1]) for root in places.roots
                   for p in root.glob(f"{method.name}-lr{result.chosen:g}-seed*")
                   if re.fullmatch(r"\d+", p.name.rsplit("seed", 1)[1])}
        runs = []
        for seed in sorted(set(seeds) | on_disk):
            run, test = places.run(method, result.chosen, seed), places.test(method, seed)
            runs.append(SeedRun(seed, best_val(run)[0] if (run / VAL_LOG).is_file() else None,
                                test / PREDICTIONS if tested(test) else None))
        found.append(MethodSeeds(method.name, result.chosen, result.position, tuple(runs)))
    return found
