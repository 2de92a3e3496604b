"""How long `--help` takes for the command and each subcommand (a fresh interpreter each time).

    python -m bench.cli_help                      # mm-adapter --help and every subcommand's --help
    python -m bench.cli_help --repeats 7 --also-scripts OLD_CHECKOUT   # plus an older checkout's scripts

Target (issue 11): every `--help` returns in under 1.5 s on this machine. Prints one JSON line per
command (median and worst of --repeats runs, wall clock) and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from mm_adapter.cli.commands import COMMANDS

TARGET_S = 1.5


def timed(argv: list[str], cwd: Path) -> float:
    """Wall seconds of one run; an older checkout's packages come first on the path, as its install had them."""
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, env=env, timeout=120)
    seconds = time.perf_counter() - started
    if done.returncode != 0 or "usage" not in done.stdout.lower():
        raise SystemExit(f"{' '.join(argv)} failed: {done.stderr.strip()[-300:]}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--also-scripts", type=Path, help="an older checkout whose scripts/*.py --help to time too")
    args = parser.parse_args(argv)
    here = Path(__file__).resolve().parents[1]
    cases = {"mm-adapter --help": ([sys.executable, "-m", "mm_adapter", "--help"], here)}
    cases |= {f"mm-adapter {c.name} --help": ([sys.executable, "-m", "mm_adapter", *c.words, "--help"], here)
              for c in COMMANDS}
    if args.also_scripts:  # run inside that checkout, so its own packages are the ones imported
        for script in sorted((args.also_scripts / "scripts").glob("*.py")):
            if not script.name.startswith("_"):
                cases[f"{args.also_scripts.name}/scripts/{script.name} --help"] = (
                    [sys.executable, str(script), "--help"], args.also_scripts)
    rows = []
    for name, (command, cwd) in cases.items():
        runs = [timed(command, cwd=cwd) for _ in range(args.repeats)]
        row = {"case": name, "median_s": round(statistics.median(runs), 3), "max_s": round(max(runs), 3),
               "repeats": args.repeats, "target_s": TARGET_S}
        print(json.dumps(row), flush=True)
        rows.append(row)
    print("\n| command | median s | worst s | under 1.5 s |\n|---|---:|---:|---|")
    for row in rows:
        print(f"| `{row['case']}` | {row['median_s']:.2f} | {row['max_s']:.2f} | "
              f"{'yes' if row['max_s'] < TARGET_S else 'NO'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
