"""Helpers shared by the benchmark scripts: timing, output rows, peak memory of a case in its own process."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import torch


def median_seconds(step: Callable[[], object], repeats: int = 5, warmup: int = 2) -> float:
    """Median wall time of ``step`` over ``repeats`` runs after ``warmup`` untimed runs."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def interleaved_medians(steps: dict[str, Callable[[object], object]], inputs: Sequence[object],
                        repeats: int = 5, warmup: int = 1, clock: str = "wall") -> dict[str, float]:
    """Median over ``repeats`` passes of each step's total time over ``inputs``, divided by ``len(inputs)``.

    The steps take turns on every input, so background load on a shared machine hits them alike.
    ``clock="cpu"`` measures this process's CPU time instead of wall time: with one torch thread it
    is what the step would take on an idle core, and other jobs descheduling us do not count.
    """
    now = CLOCKS[clock]
    totals: dict[str, list[float]] = {name: [] for name in steps}
    for index in range(warmup + repeats):
        elapsed = dict.fromkeys(steps, 0.0)
        for item in inputs:
            for name, step in steps.items():
                start = now()
                step(item)
                elapsed[name] += now() - start
        if index >= warmup:
            for name in steps:
                totals[name].append(elapsed[name])
    return {name: statistics.median(values) / len(inputs) for name, values in totals.items()}


def emit(row: dict, columns: list[str]) -> None:
    """Print one JSON line and one Markdown table row for a benchmark case."""
    print(json.dumps(row, sort_keys=True), flush=True)
    cells = [f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c]) for c in columns]
    print("| " + " | ".join(cells) + " |", flush=True)


def header(columns: list[str]) -> None:
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns), flush=True)


def verdict(value: float, limit: float, at_most: bool = True) -> str:
    met = value <= limit if at_most else value >= limit
    return f"{'met' if met else 'MISSED'} ({'<=' if at_most else '>='} {limit})"


def add_common_args(parser: argparse.ArgumentParser, cases: Sequence[str], repeats: int = 5) -> None:
    """Flags every case script shares: base model, repetitions, threads, memory measurement."""
    parser.add_argument("--base", default="smollm2-135m")
    parser.add_argument("--repeats", type=int, default=repeats, help="timed repetitions (median), after a warm-up")
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 on a shared machine)")
    parser.add_argument("--clock", choices=list(CLOCKS), default="wall",
                        help="wall time, or this process's CPU time (with --threads 1 on a busy machine)")
    parser.add_argument("--memory", action="store_true", help="also measure each case's peak memory in its own process")
    parser.add_argument(MEMORY_FLAG, dest="memory_of", choices=cases, help=argparse.SUPPRESS)


def common_child_argv(args: argparse.Namespace) -> list[str]:
    """The shared flags to pass on to a ``--memory-of`` child."""
    return ["--base", args.base] + (["--threads", str(args.threads)] if args.threads else [])


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


# --- peak memory: one fresh process per case ---------------------------------------------------------

MEMORY_FLAG = "--memory-of"


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024  # kB


def report_memory(run: Callable[[], object], device: torch.device | None = None) -> None:
    """In a ``--memory-of`` child: run the case and print its memory as one JSON line.

    CPU (Linux): the resident-set high-water mark is reset just before the case (``/proc/self/clear_refs``),
    so loading data and weights cannot hide the case's own peak; reported are the peak RSS during the
    case (weights, Python and torch included) and that peak minus the RSS just before it (what the case
    adds: activations, gradients, optimizer state, logits). CUDA: ``torch.cuda.max_memory_allocated``.
    """
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_mb("VmRSS")
    if device is not None and device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    run()
    peak = _status_mb("VmHWM")
    out = {"peak_rss_mb": round(peak, 1), "case_over_start_mb": round(peak - before, 1)}
    if device is not None and device.type == "cuda":
        out["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    print("MEMORY " + json.dumps(out), flush=True)


def memory_in_subprocess(module: str, argv: Sequence[str], case: str) -> dict[str, float]:
    """Run ``python -m module *argv --memory-of case`` and return the memory it reports."""
    cmd = [sys.executable, "-m", module, *argv, MEMORY_FLAG, case]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    for line in result.stdout.splitlines():
        if line.startswith("MEMORY "):
            return json.loads(line.removeprefix("MEMORY "))
    raise RuntimeError(f"{' '.join(cmd)} reported no memory (exit {result.returncode}):\n{result.stderr[-2000:]}")
