"""A comparison's records, small enough to commit: what each run and test of OUT says, without its weights.

A machine's run folders do not outlive it (checkpoints are hundreds of MB, and a new machine starts bare), but a
number in the docs must still point at the run it came from. This copies from OUT, by name only, each finished run's
``config.yaml``, ``metrics.jsonl``, ``validation.jsonl`` and ``run.json``, each finished test's ``eval.json``,
``config.yaml``, ``predictions.json``, ``summary.json`` and ``table.md`` (McNemar and the seeds summary need the
predictions), and OUT's own reports (grids, search, table and seeds, Markdown and JSON):

    python -m bench.methods.records runs/eq3 eval/records/eq3

A run's or test's file already in DEST with other content is refused, not overwritten: the same name trained or
evaluated again gave something else, and both stay to be compared. OUT's reports are replaced: they summarise the
runs so far. A run still training, a test still answering and every weight are left out.
"""

from __future__ import annotations

import filecmp
import shutil
import sys
from pathlib import Path

from bench.methods.cli import OneLineParser
from bench.methods.lr_search import TEST_NAME, finished, tested
from mm_adapter.errors import MMAdapterError

RUN_FILES = ("config.yaml", "metrics.jsonl", "validation.jsonl", "run.json")
TEST_FILES = ("eval.json", "config.yaml", "predictions.json", "summary.json", "table.md")
REPORTS = ("grids.json", "search.md", "table.md", "table.json", "seeds.md", "seeds.json")
MAX_BYTES = 4 << 20  # a test's predictions.json is ~0.3 MB; anything far larger is not a record


def kept_files(out: Path) -> tuple[list[Path], list[Path]]:
    """(files of finished runs and tests, OUT's reports), as paths relative to OUT."""
    records = []
    for folder in sorted(p for p in out.iterdir() if p.is_dir()):
        if TEST_NAME.fullmatch(folder.name):
            names = TEST_FILES if tested(folder) else ()
        else:
            names = RUN_FILES if finished(folder) else ()
        records += [folder.relative_to(out) / name for name in names if (folder / name).is_file()]
    return records, [Path(name) for name in REPORTS if (out / name).is_file()]


def keep(out: Path, dest: Path) -> tuple[int, int]:
    """Copy OUT's records into DEST; (files copied, files already there and equal). Every file is checked before
    any is copied, so a refusal leaves DEST as it was."""
    records, reports = kept_files(out)
    for relative in records + reports:
        size = (out / relative).stat().st_size
        if size > MAX_BYTES:
            raise MMAdapterError(f"{out / relative}: {size:,} bytes, over the {MAX_BYTES:,} a record may hold")
    same = [r for r in records if (dest / r).is_file() and filecmp.cmp(out / r, dest / r, shallow=False)]
    differ = next((r for r in records if (dest / r).exists() and r not in same), None)
    if differ is not None:
        raise MMAdapterError(f"{dest / differ}: already recorded with other content than {out / differ} (the same "
                             "run or test name gave another result); record this one into another folder")
    copied = 0
    for relative in [r for r in records if r not in same] + reports:
        (dest / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / relative, dest / relative)
        copied += 1
    return copied, len(same)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m bench.methods.records", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the comparison's --out folder")
    parser.add_argument("dest", type=Path, help="folder of its records (created if missing)")
    args = parser.parse_args(argv)
    if not args.out.is_dir():
        parser.error(f"out {args.out}: not a folder")
    if args.dest.resolve() == args.out.resolve() or args.out.resolve() in args.dest.resolve().parents:
        parser.error(f"dest {args.dest}: inside out {args.out}; records go to a folder of their own")
    try:
        copied, same = keep(args.out, args.dest)
    except (MMAdapterError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{args.dest}: {copied} files copied, {same} already recorded")
    return 0


if __name__ == "__main__":
    sys.exit(main())
