"""ScienceQA evaluation speed against this machine's floor, measured in the same run.

Times the real evaluation path (``eval.run.run``: batches planned over all problems, score mode, predictions appended
to a partial file and written as the official JSON) on the real split, and counts the model work it needs: the
tokens the forwards read (each question's prompt once, plus each option's own tokens for a text format, or the
letter prefix for QCM-A) and their FLOPs (2 x every decoder linear layer's weights per token, attention over each
token's context, the adapter's prompt attention, the LM head at the scored positions only). In the same process it
measures the machine's matmul rate at the model's own linear shapes, in bf16 and fp32, before and after the
evaluation. The floor is the time those FLOPs take at that rate in the evaluation's precision; the result is the
ratio ``eval seconds / floor seconds`` (1.0: nothing but the model's matmuls at the machine's best rate).

``--save FILE`` keeps the run's answers (pid -> option); ``--compare FILE`` counts the problems whose answer differs
from an earlier run's (another commit or setting: a change of arithmetic may move a few near ties).

Run: .venv/bin/python -m bench.eval_speed --threads 2                     (the full test split, QCM-T, bf16)
     .venv/bin/python -m bench.eval_speed --threads 2 --limit 400         (a fixed subset: the split's first 400)
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from bench.batches import SCIENCEQA_DIR
from bench.common import header
from mm_adapter import AdapterConfig, attach_adapter, load_adapter, load_base
from mm_adapter.eval.config import EvalConfig
from mm_adapter.eval.run import run
from mm_adapter.inference.scoring import _cloze_texts
from mm_adapter.scienceqa.data import read_official
from mm_adapter.scienceqa.prompts import PromptFormat, build_prompt

COLUMNS = ["problems", "threads", "precision", "batch", "eval_s", "problems_s", "tokens_s", "model_gflop_s",
           "floor_gflop_s", "floor_s", "eval_over_floor"]


def linear_shapes(model) -> dict[tuple[int, int], int]:
    """(in, out) of every linear layer of the decoder -> how many there are (the forward's matmuls per token)."""
    shapes: dict[tuple[int, int], int] = {}
    for module in model.get_decoder().modules():
        if isinstance(module, torch.nn.Linear):
            key = (module.in_features, module.out_features)
            shapes[key] = shapes.get(key, 0) + 1
    return shapes


def work(model, tokenizer, problems, config: EvalConfig) -> dict[str, float]:
    """Tokens the forwards read, scored positions, and the FLOPs of the decoder's matmuls and attention (what any
    implementation computing score mode's numbers must do at least; padding is not counted)."""
    prompts = [build_prompt(p, config.prompt_format, config.captions).prompt for p in problems]
    tokens = scored = contexts = 0  # contexts: over tokens, the keys each one attends to
    if PromptFormat.parse(config.prompt_format).answers_by_text:
        options = _cloze_texts(tokenizer, prompts, [p.choices for p in problems])
        shared = {o.owner: o.shared for o in options}
        tokens = sum(shared.values()) + sum(len(o.ids) - o.shared for o in options)
        scored = sum(len(o.ids) - o.first for o in options)
        contexts = sum(n * (n + 1) // 2 for n in shared.values())
        contexts += sum(sum(range(o.shared + 1, len(o.ids) + 1)) for o in options)
    else:
        for ids in tokenizer([prompt + " The answer is" for prompt in prompts]).input_ids:
            tokens, scored, contexts = tokens + len(ids), scored + 1, contexts + len(ids) * (len(ids) + 1) // 2
    text = model.config
    heads, layers = text.num_attention_heads, text.num_hidden_layers
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    linear = sum(2 * k * n * count for (k, n), count in linear_shapes(model).items())
    lm_head = 2 * model.lm_head.in_features * model.lm_head.out_features
    return {"tokens": tokens, "scored": scored, "linear_flops": linear * tokens,
            "attention_flops": 4 * layers * heads * head_dim * contexts, "head_flops": lm_head * scored}


def matmul_rate(shapes: Sequence[tuple[int, int]], rows: int, dtype: torch.dtype, repeats: int = 10) -> float:
    """FLOP/s of ``F.linear`` at ``rows`` x each (in, out) shape, FLOP-weighted over the shapes (median of
    ``repeats``), at the current thread count."""
    flops = seconds = 0.0
    for k, n in shapes:
        x, w = torch.randn(rows, k, dtype=dtype), torch.randn(n, k, dtype=dtype)
        for _ in range(3):
            torch.nn.functional.linear(x, w)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            torch.nn.functional.linear(x, w)
            times.append(time.perf_counter() - start)
        flops += 2 * rows * k * n
        seconds += statistics.median(times)
    return flops / seconds


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SCIENCEQA_DIR))
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, help="the split's first N problems (a fixed subset for quick runs)")
    parser.add_argument("--format", default="QCM-T")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--base", default="smollm2-135m")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="the base weights' dtype")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True, help="bf16 autocast")
    parser.add_argument("--adapter", help="a trained adapter file (default: a fresh adapter: the same work)")
    parser.add_argument("--adapter-len", type=int, default=10, help="the fresh adapter's prompts per layer")
    parser.add_argument("--adapter-layers", type=int, default=30, help="the fresh adapter's adapted layers")
    parser.add_argument("--save", help="write the answers (pid -> option) here")
    parser.add_argument("--compare", help="count answers that differ from those saved in this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not Path(args.data, "problems.json").exists():
        parser.exit(2, f"{args.data}: no problems.json (the benchmark times the real data set)\n")
    if args.compare and not Path(args.compare).is_file():
        parser.exit(2, f"--compare {args.compare}: no such file\n")
    model, tokenizer = load_base(args.base, dtype=args.dtype)
    if args.adapter:
        load_adapter(model, args.adapter)
    else:
        attach_adapter(model, AdapterConfig(adapter_len=args.adapter_len, adapter_layers=args.adapter_layers))
    problems = read_official(Path(args.data), args.split)[0][:args.limit]
    config = EvalConfig(format=args.format, batch_size=args.batch_size, bf16=args.bf16)
    counts = work(model, tokenizer, problems, config)
    shapes = sorted(linear_shapes(model)) + [(model.lm_head.in_features, model.lm_head.out_features)]
    rows = args.batch_size * round(counts["tokens"] / len(problems))  # rows of a typical forward
    precision = torch.bfloat16 if args.bf16 or args.dtype == "bf16" else torch.float32
    rates_before = {d: matmul_rate(shapes, rows, d) for d in (torch.bfloat16, torch.float32)}
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        summary = run(model, tokenizer, problems, Path(folder) / "predictions.json", config, progress=False)
        seconds = time.perf_counter() - start
        answers = json.loads((Path(folder) / "predictions.json").read_text())["results"]
    rates_after = {d: matmul_rate(shapes, rows, d) for d in (torch.bfloat16, torch.float32)}
    rate = (rates_before[precision] + rates_after[precision]) / 2
    flops = counts["linear_flops"] + counts["attention_flops"] + counts["head_flops"]
    floor = flops / rate
    print(f"base {args.base} ({args.dtype} weights{', bf16 autocast' if args.bf16 else ''}), adapter "
          f"{args.adapter or f'fresh {args.adapter_len} x {args.adapter_layers}'}, {args.split} {args.format}, torch {torch.__version__}")
    print(f"work: {counts['tokens']:,} tokens read, {counts['scored']:,} scored; {flops / 1e12:.2f} TFLOP "
          f"(linear {counts['linear_flops'] / 1e12:.2f}, attention {counts['attention_flops'] / 1e12:.2f}, "
          f"LM head {counts['head_flops'] / 1e12:.2f})")
    print(f"matmul rate at the model's shapes x {rows} rows, GFLOP/s before / after the evaluation: bf16 "
          f"{rates_before[torch.bfloat16] / 1e9:.0f} / {rates_after[torch.bfloat16] / 1e9:.0f}, fp32 "
          f"{rates_before[torch.float32] / 1e9:.0f} / {rates_after[torch.float32] / 1e9:.0f}")
    print(f"accuracy {summary.accuracy:.2%} ({summary.correct}/{summary.answered})")
    header(COLUMNS)
    row = {"problems": len(problems), "threads": args.threads, "precision": str(precision).removeprefix("torch."),
           "batch": args.batch_size, "eval_s": seconds, "problems_s": len(problems) / seconds,
           "tokens_s": counts["tokens"] / seconds, "model_gflop_s": flops / seconds / 1e9,
           "floor_gflop_s": rate / 1e9, "floor_s": floor, "eval_over_floor": seconds / floor}
    print("| " + " | ".join(f"{row[c]:.3f}" if isinstance(row[c], float) else f"{row[c]}" for c in COLUMNS) + " |")
    print(json.dumps(row, sort_keys=True))
    if args.save:
        Path(args.save).write_text(json.dumps(answers, sort_keys=True))
    if args.compare:
        earlier = json.loads(Path(args.compare).read_text())
        common = [pid for pid in answers if pid in earlier]
        changed = [pid for pid in common if answers[pid] != earlier[pid]]
        print(f"answers differing from {args.compare}: {len(changed)} of {len(common)}"
              + (f" ({', '.join(changed[:10])}{' ...' if len(changed) > 10 else ''})" if changed else ""))
        row["changed"] = len(changed)
    return {**row, **counts}


if __name__ == "__main__":
    main()
