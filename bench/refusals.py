"""How long the command takes to refuse a bad input, against the floor the old order paid (issue 22, item 3).

    python -m bench.refusals                  # median of --repeats fresh processes per case
    python -m bench.refusals --repeats 3

Each case is a bad input a newcomer gives (a misspelt split, one choice, a ScienceQA problems.json to
``train alpaca``, ...) that the command used to refuse only after importing the job, run through the installed
``mm-adapter`` in a fresh process (wall clock, start-up included). Baseline, measured in the same run: a fresh
process importing the case's job module, which the command did before it checked anything (torch and
transformers come with it), so before this change no such refusal could come sooner. Prints one JSON line per
case and a Markdown table with the ratio. Uses ../shared/data when present, else small generated files; nothing
is downloaded.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
TARGET_S = 1.0  # "well under a second"


def _files(tmp: Path) -> tuple[Path, Path]:
    """An official-layout ScienceQA folder and an Alpaca file: the shared ones, else tiny generated ones."""
    if (SHARED / "scienceqa" / "problems.json").is_file() and (SHARED / "alpaca" / "alpaca_5000.json").is_file():
        return SHARED / "scienceqa", SHARED / "alpaca" / "alpaca_5000.json"
    folder = tmp / "sqa"
    folder.mkdir()
    problem = {"question": "Which is a mammal?", "choices": ["cat", "trout"], "answer": 0, "hint": "", "image": None}
    (folder / "problems.json").write_text(json.dumps({"1": problem, "2": problem}, indent=1))
    (folder / "pid_splits.json").write_text(json.dumps({"train": ["1"], "val": ["2"]}))
    (folder / "captions.json").write_text(json.dumps({"captions": {}}))
    alpaca = tmp / "alpaca.json"
    alpaca.write_text(json.dumps([{"instruction": "Say hi.", "input": "", "output": "Hi."}] * 3))
    return folder, alpaca


def cases(tmp: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (argv after mm-adapter, the job module the command imported before checking)."""
    sqa, alpaca = _files(tmp)
    out = str(tmp / "out")
    return {
        "train alpaca, problems.json as --data": (["train", "alpaca", "--data", str(sqa / "problems.json"), "--out",
                                                   out], "mm_adapter.jobs.train_alpaca"),
        "train alpaca, --split of a local file": (["train", "alpaca", "--data", str(alpaca), "--out", out, "--split",
                                                   "test"], "mm_adapter.jobs.train_alpaca"),
        "eval scienceqa, misspelt --split": (["eval", "scienceqa", "--data", str(sqa), "--split", "vall", "--out",
                                              out], "mm_adapter.jobs.eval_scienceqa"),
        "train scienceqa, misspelt --val-split": (["train", "scienceqa", "--data", str(sqa), "--val-split", "dev",
                                                   "--out", out], "mm_adapter.jobs.train_scienceqa"),
        "demo, one choice": (["demo", "--question", "Which?", "--choices", "a"], "mm_adapter.jobs.demo"),
    }


def wall(argv: list[str], expect: int) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=300)
    seconds = time.perf_counter() - started
    if done.returncode != expect:
        raise SystemExit(f"{' '.join(argv)}: exit {done.returncode}, expected {expect}: {done.stderr.strip()[-300:]}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    command = str(Path(sys.executable).with_name("mm-adapter"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (words, module) in cases(Path(tmp)).items():
            refusals, imports = [], []
            for _ in range(args.repeats):  # interleaved, so load on the shared machine hits both alike
                refusals.append(wall([command, *words], expect=2))
                imports.append(wall([sys.executable, "-c", f"import {module}"], expect=0))
            row = {"case": name, "refusal_s": round(statistics.median(refusals), 3),
                   "job_import_s": round(statistics.median(imports), 3), "repeats": args.repeats}
            row["import_over_refusal"] = round(row["job_import_s"] / row["refusal_s"], 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| bad input | refusal s | importing the job s (the old floor) | ratio | under 1 s |")
    print("|---|---:|---:|---:|---|")
    for row in rows:
        print(f"| {row['case']} | {row['refusal_s']:.2f} | {row['job_import_s']:.2f} | {row['import_over_refusal']}x | "
              f"{'yes' if row['refusal_s'] < TARGET_S else 'NO'} |")
    return 0 if all(row["refusal_s"] < TARGET_S for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
