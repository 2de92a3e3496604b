"""Issue 12, class 8 (sizes): every text is bounded before it is tokenised, and every prompt before it reaches the
model.

The rule: a text field (an Alpaca instruction, input or output; a ScienceQA question, choice, hint, lecture,
solution or caption; the demo's question, options and context) has at most ``MAX_TEXT_CHARS`` (20,000)
characters, or its record is refused in one line naming file, record or pid, and field (Alpaca: skipped and
counted unless ``--strict``); a problem has at most 26 choices. In tokens: training leaves out (ScienceQA) or
right-truncates (Alpaca) examples over ``max_seq_len`` or the model's context, counted; evaluation and the demo
refuse, in one line naming the pid, a prompt whose answering does not fit the model's ``max_position_embeddings``
(never cut: that would change the question). The tiny models here have a context of 256 tokens.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mm_adapter import MMAdapterError
from mm_adapter.data.alpaca import MAX_TEXT_CHARS as ALPACA_MAX_TEXT_CHARS
from mm_adapter.data.alpaca import AlpacaRecord, encode_alpaca, read_alpaca
from mm_adapter.data.problems import encode_problems
from mm_adapter.demo.predictor import Predictor, check_question
from mm_adapter.errors import ScienceQAError
from mm_adapter.eval.config import EvalConfig
from mm_adapter.eval.run import evaluate, partial_path, run
from mm_adapter.inference.scoring import tokens_needed
from mm_adapter.methods.virtual_tokens import context_tokens
from mm_adapter.scienceqa.data import MAX_TEXT_CHARS, Problem, read_official
from mm_adapter.scienceqa.prompts import build_prompt
from test_demo_predictor import DemoFiles, make_demo_files
from test_eval_run import PROBLEMS, make_tokenizer, single_thread  # noqa: F401 (autouse fixture)
from test_scienceqa_data import record, write_official
from test_special_files import ENV, assert_refused, command, refuses, snapshot
from tiny import tiny_model

TOO_LONG = "x" * (MAX_TEXT_CHARS + 1)
WORDY = "Which animal is a mammal? " * 60  # ~1,600 characters: within the character bound, over 256 tokens


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> DemoFiles:
    return make_demo_files(tmp_path_factory.mktemp("bounded"))


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_model("llama-gqa", vocab_size=len(tokenizer), bos_token_id=1, eos_token_id=2, pad_token_id=0)


@pytest.fixture(scope="module")
def predictor(files) -> Predictor:
    return Predictor.load(str(files.base))


def alpaca_file(path: Path, **overrides: str) -> Path:
    """Three good records, the second one with ``overrides``."""
    good = {"instruction": "Name a colour.", "input": "", "output": "Red."}
    path.write_text(json.dumps([good, {**good, **overrides}, good]))
    return path


def official(root: Path, captions: dict | None = None, **overrides) -> Path:
    """pid 1 fine, pid 2 with ``overrides``, both in split test."""
    return write_official(root, {"1": record(), "2": record(**overrides)}, {"test": ["1", "2"]}, captions)


def test_the_rule_is_one_number_for_both_sides():
    """The model side (Alpaca) and the benchmark side (ScienceQA, the demo) bound a text field by the same number."""
    assert ALPACA_MAX_TEXT_CHARS == MAX_TEXT_CHARS == 20_000


@pytest.mark.parametrize("field", ["instruction", "input", "output"])
def test_an_alpaca_field_over_the_bound_is_refused_or_skipped_and_counted(tmp_path, field):
    """An Alpaca field over MAX_TEXT_CHARS is one line naming file, record and field; with skip_bad the record is
    dropped, counted, and the others kept."""
    path = alpaca_file(tmp_path / "data.json", **{field: TOO_LONG})
    refuses(MMAdapterError, lambda: read_alpaca(path), str(path), "record 1", f"field {field!r}", "20,001 characters")
    data = read_alpaca(path, skip_bad=True)
    assert data.skipped == 1 and len(data.records) == 2


@pytest.mark.parametrize("overrides, field", [
    ({"question": TOO_LONG}, "field 'question'"),
    ({"choices": ["cat", TOO_LONG]}, "field 'choices[2]'"),
    ({"hint": TOO_LONG}, "field 'hint'"),
    ({"lecture": TOO_LONG}, "field 'lecture'"),
    ({"solution": TOO_LONG}, "field 'solution'"),
    ({"choices": [str(i) for i in range(27)]}, "more than the 26 option letters"),
])
def test_a_scienceqa_field_over_the_bound_is_refused(tmp_path, overrides, field):
    """A ScienceQA question, choice, hint, lecture or solution over MAX_TEXT_CHARS, or 27 choices, refuses the
    problem in one line naming problems.json, the pid and the field."""
    root = official(tmp_path / "data", **overrides)
    refuses(ScienceQAError, lambda: read_official(root, "test"), "problems.json", "pid 2", field)


def test_a_caption_over_the_bound_is_refused(tmp_path):
    """A caption over MAX_TEXT_CHARS is one line naming captions.json and the pid."""
    root = official(tmp_path / "data", captions={"2": TOO_LONG})
    refuses(ScienceQAError, lambda: read_official(root, "test"), "captions.json", "pid 2", "field 'caption'")


def test_a_parquet_field_over_the_bound_is_refused(tmp_path):
    """The Hugging Face layout bounds its text fields the same way (one line naming the split and the pid)."""
    datasets = pytest.importorskip("datasets")
    from mm_adapter.scienceqa.hf import load_hf

    rows = {"question": ["Which?", "Which?"], "choices": [["a", "b"], ["a", "b"]], "answer": [0, 1],
            "hint": ["", TOO_LONG]}
    datasets.Dataset.from_dict(rows).to_parquet(str(tmp_path / "test-00000-of-00001.parquet"))
    refuses(ScienceQAError, lambda: load_hf(tmp_path, "test", cache_dir=str(tmp_path / "cache")), "[test]",
            "pid test-1", "field 'hint'")


def needed(tokenizer, problem: Problem, config: EvalConfig) -> int:
    prompt = build_prompt(problem, config.prompt_format, config.captions).prompt
    new_tokens = config.max_new_tokens if config.mode == "generate" else 0
    return tokens_needed(tokenizer, [prompt], [problem.choices], config.prompt_format, new_tokens)[0]


def longest_fitting(tokenizer, make, config: EvalConfig) -> Problem:
    """``make(text)`` for the longest prefix of WORDY whose answering in ``config`` fits 256 tokens."""
    return next(make(WORDY[:end]) for end in range(len(WORDY), 0, -1)
                if needed(tokenizer, make(WORDY[:end]), config) <= 256)


def test_evaluation_refuses_a_prompt_longer_than_the_context_before_writing(model, tokenizer, tmp_path):
    """A problem whose prompt (score mode), prompt + max_new_tokens (generate mode) or longest option text (QCM-T)
    exceeds the model's 256 positions is refused in one line naming its pid, before any answer or file exists."""
    assert context_tokens(model) == 256
    long_hint = Problem("long", "Which is heavier?", ("a feather", "a brick"), 1, hint=WORDY)
    out = tmp_path / "run" / "predictions.json"
    refuses(MMAdapterError, lambda: run(model, tokenizer, [*PROBLEMS, long_hint], out, EvalConfig(), progress=False),
            "problem long", "over the model's context of 256")
    assert not out.parent.exists() and not partial_path(out).exists()
    generate = EvalConfig(mode="generate", max_new_tokens=32)
    near = longest_fitting(tokenizer, lambda text: Problem("near", "Is ice cold?", ("yes", "no"), 0, hint=text),
                           EvalConfig())
    assert evaluate(model, tokenizer, [near], EvalConfig())["near"].choice in (0, 1)  # fits alone, not with 32 new
    refuses(MMAdapterError, lambda: evaluate(model, tokenizer, [near], generate), "problem near", "256")
    option = longest_fitting(tokenizer, lambda text: Problem("option", "Which?", ("short", text), 0), EvalConfig())
    assert evaluate(model, tokenizer, [option], EvalConfig())["option"].choice in (0, 1)
    refuses(MMAdapterError, lambda: evaluate(model, tokenizer, [option], EvalConfig(format="QCM-T")),
            "problem option", "256")


def test_training_leaves_out_problems_longer_than_the_context(tokenizer):
    """ScienceQA training leaves out a problem longer than the model's context even when max_seq_len is larger, and
    refuses, in one line naming both bounds, when none fits."""
    long_hint = Problem("long", "Which is heavier?", ("a feather", "a brick"), 1, hint=WORDY[:400])
    examples, kept = encode_problems(tokenizer, [PROBLEMS[0], long_hint], max_seq_len=512)
    assert [p.pid for p in kept] == ["p1", "long"]
    examples, kept = encode_problems(tokenizer, [PROBLEMS[0], long_hint], max_seq_len=512, context=64)
    assert [p.pid for p in kept] == ["p1"] and all(len(e["input_ids"]) <= 64 for e in examples)
    refuses(MMAdapterError, lambda: encode_problems(tokenizer, [long_hint], max_seq_len=512, context=64),
            "max_seq_len=512", "context of 64")


def test_alpaca_examples_are_cut_to_the_context(tokenizer):
    """Alpaca examples are right-truncated to the model's context when it is shorter than max_seq_len, and a record
    whose prompt alone fills it is dropped and counted."""
    short = AlpacaRecord("Name a colour.", "", "Red.")
    wordy = AlpacaRecord("Name a colour.", WORDY[:300], "Red.")
    examples, dropped = encode_alpaca(tokenizer, [short, wordy], max_seq_len=512)
    fits = len(examples[0]["input_ids"])
    assert dropped == 0 and len(examples[1]["input_ids"]) > fits + 100
    examples, dropped = encode_alpaca(tokenizer, [short, wordy], max_seq_len=512, context=fits + 2)
    assert dropped == 1 and [len(e["input_ids"]) for e in examples] == [fits]


@pytest.mark.parametrize("question, choices, context, message", [
    (TOO_LONG, ["a", "b"], "", "the question is too long (20,001 characters; at most 20,000)"),
    ("Which?", ["a", TOO_LONG], "", "choice 2 is too long"),
    ("Which?", ["a", "b"], TOO_LONG, "the context is too long"),
    ("Which?", ["a"] * 10_000, "", "at most 26 choices"),
])
def test_the_demo_refuses_over_long_text_before_tokenising(question, choices, context, message):
    """The demo's question, an option or the context over MAX_TEXT_CHARS, or thousands of options, is one line."""
    refuses(MMAdapterError, lambda: check_question(question, choices, context), message)


def test_the_demo_refuses_a_question_longer_than_the_context(predictor):
    """A question within the character bound but over the model's 256 positions is one line, not a forward."""
    refuses(MMAdapterError, lambda: predictor.predict(None, WORDY, ["a", "b"]), "the question",
            "over the model's context of 256")
    assert predictor.predict(None, "Which?", ["a", "b"]).choice_index in (0, 1)  # and it keeps answering


def test_the_command_refuses_over_long_text_in_one_line(tmp_path, files, capfd):
    """``train alpaca``, ``eval scienceqa`` and ``demo`` with a field over the bound (refused before any model is
    loaded: exactly one line) or a prompt over the context (the last line, after progress lines): exit 2, one
    ``error:`` line naming the record or pid and field, no traceback, no output, every input file unchanged."""
    data = alpaca_file(tmp_path / "alpaca.json", output=TOO_LONG)
    lecture = official(tmp_path / "lecture", lecture=TOO_LONG)
    wordy = official(tmp_path / "wordy", hint=WORDY)
    out = tmp_path / "out"
    base = ["--base", str(files.base), "--device", "cpu"]
    evaluate_argv = ["eval", "scienceqa", "--split", "test", "--out", str(out), *base, "--no-progress"]
    cases = [
        (["train", "alpaca", "--data", str(data), "--out", str(out), *base, "--strict", "--adapter-layers", "2"], False,
         (str(data), "record 1", "field 'output'", "--strict")),
        ([*evaluate_argv, "--data", str(lecture)], False, ("problems.json", "pid 2", "field 'lecture'")),
        ([*evaluate_argv, "--data", str(wordy)], True, ("problem 2", "over the model's context of 256")),
        (["demo", *base, "--question", TOO_LONG, "--choices", "a", "b"], False, ("the question is too long",)),
        (["demo", *base, "--question", "Which?", "--choices", "a", "b", "--context", TOO_LONG], False,
         ("the context is too long",)),
        (["demo", *base, "--question", WORDY, "--choices", "a", "b"], True, ("over the model's context of 256",)),
    ]
    for argv, after_progress, needles in cases:
        before = snapshot(tmp_path)
        code, stdout, err = command(argv, capfd)
        assert_refused(code, err, *needles, last=after_progress)
        assert stdout == "" and not (out / "predictions.json").exists()
        after = snapshot(tmp_path)
        assert {name: after[name] for name in before} == before and set(after) - set(before) <= {"out",
                                                                                               "out/config.yaml"}


def test_an_over_long_question_in_a_real_process_is_one_line(tmp_path):
    """``python -m mm_adapter demo`` with a 20,001-character question: exit 2, one line, before any model loads."""
    done = subprocess.run([sys.executable, "-m", "mm_adapter", "demo", "--question", TOO_LONG, "--choices", "a", "b"],
                          capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=120)
    assert_refused(done.returncode, done.stderr, "the question is too long (20,001 characters; at most 20,000)")
    assert done.stdout == "" and list(tmp_path.iterdir()) == []
