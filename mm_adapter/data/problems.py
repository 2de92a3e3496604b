"""ScienceQA problems for the jobs: loading a split from either layout, and training examples.

A problem becomes ``prompt + target`` tokenised as ONE string (exactly how score mode reads the
answer), with labels only on the target's tokens (found through the tokenizer's character
offsets, so a token that straddles the prompt/target boundary is handled).

Bounds: the loaders refuse a text field over ``MAX_TEXT_CHARS`` characters before anything is
tokenised; a problem longer than ``max_seq_len`` tokens, or than the model's context when it is
given, is left out (never cut: a cut target teaches a wrong answer) and counted by the caller.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from mm_adapter.data.config import ScienceQASource
from mm_adapter.errors import MMAdapterError
from mm_adapter.scienceqa.data import Problem, read_official
from mm_adapter.scienceqa.hf import load_hf
from mm_adapter.scienceqa.prompts import build_prompt
from mm_adapter.training.batches import IGNORE_INDEX, Example


def load_problems(source: ScienceQASource, split: str, captions: bool = True, limit: int | None = None,
                  say=lambda line: print(line, file=sys.stderr)) -> list[Problem]:
    """The problems of ``split`` (the first ``limit``), from the official layout or the Hugging Face one."""
    source.require()
    if source.data is not None:
        problems, summary = read_official(source.data, split, captions=captions)
        say(f"{source.data}: {summary}")
    else:
        problems = load_hf(source.hf, split)
        if captions:
            say(f"{source.hf}: the Hugging Face layout has no captions; image questions get none")
    problems = problems[:limit] if limit else problems
    if not problems:
        raise MMAdapterError(f"split {split!r} has no problems")
    return problems


def encode_problem(tokenizer, problem: Problem, fmt: str = "QCM-A", use_caption: bool = True,
                   max_seq_len: int = 512) -> Example | None:
    """Token ids and labels (target only) of one problem; ``None`` when truncation would cut the target."""
    pair = build_prompt(problem, fmt, use_caption=use_caption)
    text = pair.prompt + pair.target
    encoded = tokenizer(text, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    boundary = len(pair.prompt)
    labels = [token if start >= boundary or end > boundary else IGNORE_INDEX
              for token, (start, end) in zip(ids, offsets)]
    if tokenizer.eos_token_id is not None:
        ids, labels = ids + [tokenizer.eos_token_id], labels + [tokenizer.eos_token_id]
    if len(ids) > max_seq_len:
        return None
    return {"input_ids": ids, "labels": labels}


def encode_problems(tokenizer, problems: Sequence[Problem], fmt: str = "QCM-A", use_caption: bool = True,
                    max_seq_len: int = 512, context: int | None = None) -> tuple[list[Example], list[Problem]]:
    """Examples and the problems they came from; problems longer than ``max_seq_len`` tokens, or than
    ``context`` (the model's, ``eval.scoring.context_tokens``) when given, are left out."""
    limit = min(max_seq_len, context or max_seq_len)
    kept = [(encode_problem(tokenizer, p, fmt, use_caption, limit), p) for p in problems]
    kept = [(example, problem) for example, problem in kept if example is not None]
    if not kept:
        bound = f"max_seq_len={max_seq_len}" + (f" and the model's context of {context}" if limit < max_seq_len else "")
        raise MMAdapterError(f"no problem fits {bound}")
    return [e for e, _ in kept], [p for _, p in kept]
