"""The ScienceQA evaluation runner: answer problems in batches, append as it goes, resume after a kill.

Two modes (see ``mm_adapter/inference/scoring.py``): ``score`` compares the option letters' log-probabilities
after "The answer is" (one forward per batch; no parsing, always an answer) or, for the text format
QCM-T, the options' cloze scores (one forward over every option of the batch), ``generate`` decodes
greedily and reads the answer with ``scienceqa.prompts.extract_answer``; a generation it cannot
read is stored as -1 and counted, never replaced by a guess. ``calibrate`` (score mode) subtracts each
option's score after the problem's content-free prompt (``Question: N/A``, ``Context: N/A``, the same
options, no image), a second forward per batch.

Before anything is computed or written, every problem must fit the model's context
(``max_position_embeddings``): its prompt with its longest option (score mode) or with
``max_new_tokens`` (generate mode). One that does not is refused in one line naming its pid; a
prompt is never cut, since that would change the benchmark's question. (The loaders have already
bounded every text field to ``MAX_TEXT_CHARS`` characters, so tokenising them is bounded too.)

``evaluate`` answers in memory (training-time validation). ``run`` writes the official
predictions file: every finished batch is appended to ``PRED.partial.jsonl`` (a header line with
the run's configuration, then one line per pid) and flushed; a rerun with the same configuration
skips the pids found there; the final JSON is written atomically and the partial file removed.
Batches are planned over all problems (longest prompt first, ties in input order), so a resumed
run computes exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from mm_adapter.errors import MMAdapterError
from mm_adapter.eval.config import DEFAULT_FORMAT, EvalConfig
from mm_adapter.files.atomic import atomic_write_json, atomic_write_text
from mm_adapter.files.progress import progress as progress_bar
from mm_adapter.files.text import loads_json, read_text
from mm_adapter.inference.precision import frozen_linear_weights_in_bf16, precision
from mm_adapter.inference.scoring import (
    calibrated_scores, check_context, choice_scores, greedy_generate, tokens_needed,
)
from mm_adapter.methods.virtual_tokens import context_tokens
from mm_adapter.pretrained import recorded_format
from mm_adapter.scienceqa.data import Problem
from mm_adapter.scienceqa.predictions import NO_ANSWER, make_predictions
from mm_adapter.scienceqa.prompts import PromptFormat, build_prompt, content_free, extract_answer, stated_answer

# A batch of problems -> their (batch, hidden) prompt offsets (the multimodal path; zero rows for no image).
Offsets = Callable[[Sequence[Problem]], torch.Tensor]


@dataclass(frozen=True)
class Answer:
    """One answered problem. ``choice`` is -1 when a generation could not be read.
    ``probs``: score mode's per-option probabilities (renormalised over the options)."""

    pid: str
    choice: int
    output: str
    probs: list[float] | None = None


def resolve_format(requested: str | None, adapter: str | Path | None,
                   warn: Callable[[str], None] = print) -> str:
    """The prompt format to answer in: the one asked for, else the one the adapter file records, else QCM-A.
    Asking for another format than the adapter was trained on is allowed (a study) but said."""
    recorded = recorded_format(adapter) if adapter else None
    chosen = PromptFormat.parse(requested or recorded or DEFAULT_FORMAT).value
    if recorded and chosen != recorded:
        warn(f"note: {Path(adapter).name} was trained on {recorded}; answering in {chosen} as asked")
    return chosen


def batch_plan(problems: Sequence[Problem], config: EvalConfig) -> list[list[Problem]]:
    """Deterministic batches: longest first (less padding; memory trouble shows at once), by the characters a
    forward reads: the prompt, and for a text format every option's stated answer too (they sit beside it)."""
    by_text = PromptFormat.parse(config.prompt_format).answers_by_text and config.mode == "score"
    length = {p.pid: len(build_prompt(p, config.prompt_format, config.captions).prompt)
              + (sum(len(stated_answer(p.choices, i, config.prompt_format)) for i in range(len(p.choices)))
                 if by_text else 0) for p in problems}
    ordered = sorted(problems, key=lambda p: -length[p.pid])  # stable: ties keep input order
    return [ordered[i: i + config.batch_size] for i in range(0, len(ordered), config.batch_size)]


def check_fit(model, tokenizer, problems: Sequence[Problem], config: EvalConfig) -> None:
    """Refuse, in one line naming the first pid, problems too long for the model's context."""
    prompts = _prompts(problems, config)
    new_tokens = config.max_new_tokens if config.mode == "generate" else 0
    lengths = tokens_needed(tokenizer, prompts, [p.choices for p in problems], config.prompt_format, new_tokens)
    check_context(lengths, context_tokens(model), [f"problem {p.pid}" for p in problems])


def _prompts(problems: Sequence[Problem], config: EvalConfig) -> list[str]:
    return [build_prompt(p, config.prompt_format, config.captions).prompt for p in problems]


def score_batch(model, tokenizer, problems: Sequence[Problem], config: EvalConfig,
                offsets: torch.Tensor | None = None) -> torch.Tensor:
    """Score mode's option scores of one batch; with ``config.calibrate``, minus those after each problem's
    content-free prompt (``scienceqa.prompts.content_free``: a second forward, without image offsets)."""
    prompts, choices = _prompts(problems, config), [p.choices for p in problems]
    if not config.calibrate:
        return choice_scores(model, tokenizer, prompts, choices, config.prompt_format, offsets)
    neutral = _prompts([content_free(p) for p in problems], config)
    return calibrated_scores(model, tokenizer, prompts, neutral, choices, config.prompt_format, offsets)


def answer_batch(model, tokenizer, problems: Sequence[Problem], config: EvalConfig,
                 offsets: torch.Tensor | None = None) -> list[Answer]:
    """Answer one batch (one forward in score mode, two when calibrated; one ``generate`` call in generate mode)."""
    with precision(model, config.bf16):
        if config.mode == "score":
            scores = score_batch(model, tokenizer, problems, config, offsets)
            probs = torch.softmax(scores, dim=-1)
            choices = scores.argmax(dim=-1).tolist()
            return [Answer(p.pid, c, stated_answer(p.choices, c, config.prompt_format), probs[i, :len(p.choices)].tolist())
                    for i, (p, c) in enumerate(zip(problems, choices))]
        texts = greedy_generate(model, tokenizer, _prompts(problems, config), config.max_new_tokens, offsets,
                                config.stop_at_newline)
    by_text = PromptFormat.parse(config.prompt_format).answers_by_text
    choices = [extract_answer(t, len(p.choices), p.choices, by_text) for t, p in zip(texts, problems)]
    return [Answer(p.pid, NO_ANSWER if c is None else c, t) for p, c, t in zip(problems, choices, texts)]


def iter_answers(model, tokenizer, problems: Sequence[Problem], config: EvalConfig,
                 skip: frozenset[str] | set[str] = frozenset(), offsets: Offsets | None = None
                 ) -> Iterator[list[Answer]]:
    """Answers batch by batch, over the planned batches, leaving out the pids in ``skip``.

    ``offsets``: per-batch prompt offsets (e.g. each problem's projected image features).

    The model is in eval mode meanwhile (no dropout when called from a training loop), then restored; under bf16
    autocast its frozen fp32 linear weights are cast to bf16 once for all batches (bit-identical answers).
    """
    was_training = model.training
    model.eval()
    try:
        with frozen_linear_weights_in_bf16(model, config.bf16):
            for batch in batch_plan(problems, config):
                todo = [p for p in batch if p.pid not in skip]
                if todo:
                    yield answer_batch(model, tokenizer, todo, config, offsets(todo) if offsets else None)
    finally:
        model.train(was_training)


def evaluate(model, tokenizer, problems: Sequence[Problem], config: EvalConfig = EvalConfig(),
             offsets: Offsets | None = None) -> dict[str, Answer]:
    """Answer every problem in memory (no files, no bar): pid -> Answer, in input order."""
    check_fit(model, tokenizer, problems, config)
    answers = {a.pid: a for batch in iter_answers(model, tokenizer, problems, config, offsets=offsets) for a in batch}
    return {p.pid: answers[p.pid] for p in problems}


def accuracy(answers: Mapping[str, Answer], problems: Sequence[Problem]) -> float:
    """Fraction right over the problems answered (-1 counts as wrong); nan when none."""
    scored = [p for p in problems if p.pid in answers]
    return sum(answers[p.pid].choice == p.answer for p in scored) / len(scored) if scored else float("nan")


# --- the predictions file and its append-only partial sidecar -------------------------------------------

def partial_path(out: Path) -> Path:
    return out.with_suffix(".partial.jsonl")


def _canonical(identity: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(dict(identity), sort_keys=True))


def read_partial(path: Path, identity: Mapping[str, Any]) -> dict[str, Answer]:
    """Answers already in a partial file of the same configuration; a different one is refused."""
    lines = read_text(path, "partial predictions file").splitlines()
    try:
        header = loads_json(lines[0])["config"] if lines else None
    except (ValueError, KeyError, TypeError):
        header = None
    if header is None:
        raise MMAdapterError(f"{path}: not a partial predictions file of this runner; delete it or pass --overwrite")
    wanted = _canonical(identity)
    if header != wanted:
        diff = sorted(k for k in {*header, *wanted} if header.get(k) != wanted.get(k))
        shown = ", ".join(f"{k}: {header.get(k)!r} there, {wanted.get(k)!r} now" for k in diff)
        raise MMAdapterError(f"{path}: partial run of another configuration ({shown}); "
                             "pass --overwrite to discard it or choose another --out")
    answers = {}
    for number, line in enumerate(lines[1:], start=2):
        try:
            answer = Answer(**loads_json(line))
        except (ValueError, TypeError):
            if number == len(lines):  # a kill mid-write leaves at most the last line truncated
                break
            raise MMAdapterError(f"{path}: line {number} is corrupt; delete the file to start over") from None
        answers[answer.pid] = answer
    return answers


def _append(handle, answers: Sequence[Answer]) -> None:
    handle.write("".join(json.dumps(dataclasses.asdict(a)) + "\n" for a in answers))
    handle.flush()
    os.fsync(handle.fileno())


def predictions_json(name: str, answers: Mapping[str, Answer], problems: Sequence[Problem],
                     identity: Mapping[str, Any]) -> dict:
    """The official shape, in problem order, plus this run's configuration and option probabilities."""
    ordered = [answers[p.pid] for p in problems]
    data = make_predictions(name, {a.pid: a.choice for a in ordered}, {a.pid: a.output for a in ordered})
    data["config"] = _canonical(identity)
    if all(a.probs is not None for a in ordered):
        data["probabilities"] = {a.pid: [round(x, 6) for x in a.probs] for a in ordered}
    return data


@dataclass(frozen=True)
class RunSummary:
    path: Path
    total: int
    answered: int
    resumed: int  # answers read back from the partial file
    computed: int  # answers computed by this call
    correct: int
    no_answer: int
    seconds: float  # wall time of this call's computation
    finished: bool

    @property
    def accuracy(self) -> float:
        return self.correct / self.answered if self.answered else float("nan")

    @property
    def questions_per_second(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else float("nan")


def refuse_finished(out: str | Path, overwrite: bool = False) -> None:
    """A finished predictions file is replaced only when asked (callers check before loading a model)."""
    if Path(out).exists() and not overwrite:
        raise MMAdapterError(f"{out} exists (a finished run); pass --overwrite to replace it")


def _prepare(out: Path, identity: Mapping[str, Any], overwrite: bool) -> dict[str, Answer]:
    """Refuse a finished file (unless ``overwrite``); resume a partial one of the same configuration."""
    partial = partial_path(out)
    refuse_finished(out, overwrite)
    if partial.exists():
        try:
            return read_partial(partial, identity)
        except MMAdapterError:
            if not overwrite:
                raise
            partial.unlink()
    partial.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(partial, json.dumps({"config": _canonical(identity)}, sort_keys=True) + "\n")
    return {}


def run(model, tokenizer, problems: Sequence[Problem], out: str | Path, config: EvalConfig = EvalConfig(),
        identity: Mapping[str, Any] | None = None, name: str = "model", overwrite: bool = False,
        max_batches: int | None = None, progress: bool = True, offsets: Offsets | None = None) -> RunSummary:
    """Answer ``problems`` into the predictions file ``out``, resuming a partial run.

    ``identity``: what else defines the run (base model, adapter...), merged with the config's
    answer-changing fields; a partial file made under another identity is refused.
    ``max_batches``: stop after that many computed batches, leaving the partial file (debugging,
    tests of resuming); the summary then says ``finished=False``. ``offsets``: see :func:`iter_answers`
    (they must be part of ``identity``, e.g. through the adapter file's hash).
    """
    out = Path(out)
    check_fit(model, tokenizer, problems, config)  # before the partial file is made
    identity = {**(identity or {}), **config.identity()}
    wanted = {p.pid for p in problems}
    answers = {pid: a for pid, a in _prepare(out, identity, overwrite).items() if pid in wanted}
    resumed, start = len(answers), time.perf_counter()
    gold = {p.pid: p.answer for p in problems}
    correct = sum(a.choice == gold[a.pid] for a in answers.values())
    no_answer = sum(a.choice == NO_ANSWER for a in answers.values())
    bar = progress_bar(len(problems), "eval", enabled=progress, initial=resumed, unit="q")
    batches = iter_answers(model, tokenizer, problems, config, skip=set(answers), offsets=offsets)
    with partial_path(out).open("a", encoding="utf-8") as handle, bar, contextlib.closing(batches):
        for batch in itertools.islice(batches, max_batches):
            _append(handle, batch)
            answers.update((a.pid, a) for a in batch)
            correct += sum(a.choice == gold[a.pid] for a in batch)
            no_answer += sum(a.choice == NO_ANSWER for a in batch)
            bar.set_postfix(acc=f"{correct / len(answers):.1%}", **({"unparsed": no_answer} if no_answer else {}))
            bar.update(len(batch))
    seconds = time.perf_counter() - start
    finished = len(answers) == len(problems)
    if finished:
        atomic_write_json(out, predictions_json(name, answers, problems, identity), indent=1)
        partial_path(out).unlink()
    return RunSummary(out, len(problems), len(answers), resumed, len(answers) - resumed, correct, no_answer,
                      seconds, finished)
