"""ScienceQA evaluation speed: score mode vs generate mode (questions/s) and how often they agree.

Both modes run ``eval.run.evaluate`` on the same first ``--questions`` test problems (QCM->A,
captions as context), batch ``--batch-size``, bf16 weights under bf16 autocast, with a
zero-initialised adapter on the base (``--adapter FILE`` to load a trained one instead).
Score mode reads the option letters' log-probabilities after one forward per batch; generate mode
decodes greedily (up to ``--max-new-tokens``, by default stopping at the answer line's end) and parses "The answer is X".
Agreement is counted over the questions whose generation parses. Times: median of ``--repeats``
after a warm-up, the two modes taking turns.
Run: .venv/bin/python -m bench.eval_modes --threads 1 [--questions 32 --memory]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bench.batches import SCIENCEQA_DIR
from bench.common import (
    add_common_args, common_child_argv, emit, header, interleaved_medians, memory_in_subprocess, report_memory,
    set_threads, verdict,
)
from mm_adapter import AdapterConfig, attach_adapter, load_adapter, load_base
from mm_adapter.eval.config import MODES, EvalConfig
from mm_adapter.eval.run import accuracy, evaluate
from mm_adapter.scienceqa.data import read_official
from mm_adapter.scienceqa.predictions import NO_ANSWER

COLUMNS = ["questions", "stop_at_newline", "score_q_s", "generate_q_s", "speedup", "parsed", "agreement", "score_acc", "generate_acc",
           "target"]
TARGET = 20.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SCIENCEQA_DIR))
    parser.add_argument("--adapter", help="a trained adapter file (default: a zero-initialised adapter)")
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--no-stop-at-newline", action="store_true",
                        help="generate all --max-new-tokens instead of stopping at the answer line's end")
    add_common_args(parser, MODES)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    model, tokenizer = load_base(args.base, dtype=torch.bfloat16)
    if args.adapter:
        load_adapter(model, args.adapter)
    else:
        attach_adapter(model, AdapterConfig())
    problems = read_official(Path(args.data), "test")[0][:args.questions]
    configs = {m: EvalConfig(mode=m, batch_size=args.batch_size, bf16=True, max_new_tokens=args.max_new_tokens,
                             stop_at_newline=not args.no_stop_at_newline) for m in MODES}
    if args.memory_of:
        report_memory(lambda: evaluate(model, tokenizer, problems, configs[args.memory_of]))
        return
    answers = {m: evaluate(model, tokenizer, problems, c) for m, c in configs.items()}
    runs = {m: (lambda _, c=c: evaluate(model, tokenizer, problems, c)) for m, c in configs.items()}
    seconds = interleaved_medians(runs, [None], args.repeats, clock=args.clock)
    parsed = [p for p in problems if answers["generate"][p.pid].choice != NO_ANSWER]
    agree = sum(answers["score"][p.pid].choice == answers["generate"][p.pid].choice for p in parsed)
    rate = {m: len(problems) / s for m, s in seconds.items()}
    print(f"torch threads: {torch.get_num_threads()}; adapter: {args.adapter or 'zero-initialised 10 x 30'}")
    header(COLUMNS)
    emit({"questions": len(problems), "stop_at_newline": not args.no_stop_at_newline, "score_q_s": rate["score"], "generate_q_s": rate["generate"],
          "speedup": rate["score"] / rate["generate"], "parsed": f"{len(parsed)}/{len(problems)}",
          "agreement": f"{agree}/{len(parsed)}", "score_acc": accuracy(answers["score"], problems),
          "generate_acc": accuracy(answers["generate"], problems),
          "target": verdict(rate["score"] / rate["generate"], TARGET, at_most=False),
          "threads": torch.get_num_threads(), "clock": args.clock}, COLUMNS)
    if args.memory:
        child = common_child_argv(args) + ["--data", args.data, "--questions", str(args.questions), "--batch-size",
                                           str(args.batch_size), "--max-new-tokens", str(args.max_new_tokens)]
        child += (["--adapter", args.adapter] if args.adapter else []) + (
            ["--no-stop-at-newline"] if args.no_stop_at_newline else [])
        columns = ["mode", "peak_rss_mb", "case_over_start_mb"]
        print()
        header(columns)
        for mode in MODES:
            emit({"mode": mode, **memory_in_subprocess("bench.eval_modes", child, mode)}, columns)


if __name__ == "__main__":
    main()
