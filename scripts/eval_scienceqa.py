"""Evaluate a base model, optionally with an adapter, on ScienceQA: predictions and the table in one go.

    python scripts/eval_scienceqa.py --data ../shared/data/scienceqa --split val --bf16 --out runs/zs_val.json
    python scripts/eval_scienceqa.py --adapter runs/sqa.safetensors --data DATA --split test --out runs/test.json \
        --reference DATA/external/published_tables.json

An adapter trained with images (scripts/finetune_scienceqa.py --images) records its visual config:
its encoder and projection are rebuilt from the file, and each problem's image (official
images/<split>/<pid>/image.png or the HF image column) is encoded once through the feature cache
and added to the adaption prompts; problems without an image get nothing added.

Predictions are appended to OUT.partial.jsonl as they are computed; rerunning the same command
after a kill resumes. The Markdown table goes to stdout, the run summary to stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval.run import MODES, EvalConfig, partial_path, refuse_finished, run  # noqa: E402
from eval.sqa_visual import ImageOffsets, compute_features, report_skipped  # noqa: E402
from eval.table import _Parser  # noqa: E402  (one-line argument errors, as in every entry point)
from mm_adapter import BaseIdentity, load_base  # noqa: E402
from mm_adapter.base import DEFAULT_SPEC  # noqa: E402
from mm_adapter.errors import MMAdapterError  # noqa: E402
from mm_adapter.visual import load_multimodal_adapter  # noqa: E402
from scienceqa.data import Problem, read_official  # noqa: E402
from scienceqa.hf import load_hf  # noqa: E402
from scienceqa.metrics import score  # noqa: E402
from scienceqa.predictions import load_predictions  # noqa: E402
from scienceqa.report import markdown, read_reference  # noqa: E402
from eval.sqa_train import resolve_format  # noqa: E402
from scripts._cli import run as run_cli  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="scripts/eval_scienceqa.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default=DEFAULT_SPEC, help="base model spec (see mm_adapter.load_base)")
    p.add_argument("--adapter", type=Path, help="adapter file (.safetensors) to apply")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="official layout: problems.json, pid_splits.json, captions.json")
    source.add_argument("--hf", help="Hugging Face layout: parquet file/folder or hub name (derek-thomas/ScienceQA)")
    p.add_argument("--split", default="val", help="split to evaluate (test, val, train, minival, ...)")
    p.add_argument("--mode", choices=MODES, default="score")
    p.add_argument("--format", help="prompt format (default: the one the adapter file records, else QCM-A; QCM-T answers by option text)")
    p.add_argument("--captions", action=argparse.BooleanOptionalAction, default=True,
                   help="image questions get their caption as context (the benchmark's text-only setting)")
    p.add_argument("--limit", type=int, help="only the first N problems of the split")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")
    p.add_argument("--max-new-tokens", type=int, default=32, help="generate mode")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, required=True, help="predictions JSON to write")
    p.add_argument("--overwrite", action="store_true", help="replace a finished OUT / discard a foreign partial file")
    p.add_argument("--name", help="method name in the file and the table (default: from base/adapter/mode)")
    p.add_argument("--reference", type=Path, help="published tables JSON to show side by side")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="resamples for 95%% intervals (0: none)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="with an image adapter: a missing/corrupt image makes its problem a no-image one (counted)")
    return p


def load_problems(args: argparse.Namespace) -> list[Problem]:
    if args.data is not None:
        problems, summary = read_official(args.data, args.split, captions=args.captions)
        print(f"{args.data}: {summary}", file=sys.stderr)
    else:
        problems = load_hf(args.hf, args.split)
        if args.captions:
            print(f"{args.hf}: the Hugging Face layout has no captions; image questions get none", file=sys.stderr)
    if args.limit is not None:
        if args.limit < 1:
            raise MMAdapterError("--limit must be positive")
        problems = problems[: args.limit]
    if not problems:
        raise MMAdapterError(f"split {args.split!r} has no problems to evaluate")
    return problems


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()[:16]


def _check_out(args: argparse.Namespace) -> None:
    """Never write the predictions over one of the inputs, nor over a finished run unless asked."""
    inputs = [args.adapter, args.reference, args.hf and Path(args.hf)]
    if args.data is not None:
        inputs += [args.data / name for name in ("problems.json", "pid_splits.json", "captions.json")]
    for target in (args.out, partial_path(args.out)):
        if any(path is not None and path.exists() and target.resolve() == path.resolve() for path in inputs):
            raise MMAdapterError(f"--out {args.out}: {target} is one of the inputs; refusing to overwrite it")
    refuse_finished(args.out, args.overwrite)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    _check_out(args)
    fmt = resolve_format(args.format, args.adapter, warn=lambda line: print(line, file=sys.stderr))
    config = EvalConfig(mode=args.mode, fmt=fmt, use_caption=args.captions, batch_size=args.batch_size,
                        bf16=args.bf16, max_new_tokens=args.max_new_tokens)
    problems = load_problems(args)
    model, tokenizer = load_base(args.base)
    model.to(args.device)
    visual = load_multimodal_adapter(model, args.adapter, args.device) if args.adapter else None
    offsets = None
    if visual is not None:
        encoder, projection = visual
        features = compute_features(encoder, problems, args.data, args.skip_bad_images)
        report_skipped(features, args.split)
        print(f"images: {len(features.by_pid)} of {len(problems)} problems, encoder {encoder.config.clip_model}",
              file=sys.stderr)
        offsets = ImageOffsets(projection, features)
    identity = {"base": args.base, "base_fingerprint": BaseIdentity.of(model).fingerprint,
                "adapter": _sha256(args.adapter) if args.adapter else None}
    if offsets is not None:  # which images were used (a skipped one changes answers)
        identity["image_features"] = offsets.features.fingerprint(problems)
    name = args.name or f"{args.base} {args.adapter.stem if args.adapter else 'zero-shot'} ({args.mode})"
    summary = run(model, tokenizer, problems, args.out, config, identity, name, args.overwrite,
                  progress=not args.no_progress, offsets=offsets)
    print(f"{args.split}: {summary.total} problems ({summary.resumed} resumed), accuracy {summary.accuracy:.2%}, "
          f"{summary.no_answer} unparsed, {summary.questions_per_second:.2f} questions/s over {summary.computed} "
          f"computed in {summary.seconds:.1f} s; wall {time.perf_counter() - started:.1f} s -> {args.out}",
          file=sys.stderr)
    scores = score(load_predictions(args.out), {p.pid: p for p in problems}, n_boot=args.bootstrap)
    reference = read_reference(args.reference) if args.reference else None
    sys.stdout.write(markdown([scores], reference))
    return 0


if __name__ == "__main__":
    run_cli(main)
