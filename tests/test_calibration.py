"""Calibrated option scoring (``EvalConfig.calibrate``, ``--calibrate``): each option's score minus its score after
the problem's content-free prompt (question and context "N/A", the same options, no image).

Checked against an explicit computation, two unbatched forwards per problem and a subtraction, for the letter
formats and for QCM-T's cloze scores (with image offsets, which the content-free prompt does not get); the
calibration must change the answers' probabilities (so removing it fails), be part of a run's identity, refuse
generate mode, and reach training-time validation.
"""

from __future__ import annotations

import pytest
import torch

from mm_adapter import AdapterConfig, adapter_parameters, attach_adapter
from mm_adapter.cli.commands import BY_WORDS
from mm_adapter.cli.parse import parse
from mm_adapter.errors import ConfigError
from mm_adapter.eval.config import EvalConfig
from mm_adapter.eval.run import evaluate
from mm_adapter.jobs import train_scienceqa as train_job
from mm_adapter.scienceqa.prompts import build_prompt, content_free, option_letters
from test_cloze import _reference_scores
from test_eval_run import ATOL, PROBLEMS, model, single_thread, tokenizer  # noqa: F401  (fixtures)
from test_formats_training import tiny_sqa, tiny_train_config  # noqa: F401  (fixture)
from tiny import tiny_model


def _probs(answers, problem) -> torch.Tensor:
    return torch.tensor(answers[problem.pid].probs)


def _letter_log_probs(model, tokenizer, problem, fmt: str) -> torch.Tensor:  # noqa: F811  (fixture names)
    """One unbatched forward of prompt + " The answer is": the full-vocabulary log-probabilities of the letters."""
    ids = tokenizer(build_prompt(problem, fmt, use_caption=True).prompt + " The answer is", return_tensors="pt")
    with torch.no_grad():
        log_probs = model(**ids).logits[0, -1].log_softmax(-1)
    return log_probs[[tokenizer.convert_tokens_to_ids(f"Ġ{x}") for x in option_letters(len(problem.choices))]]


def test_the_content_free_prompt_is_the_documented_one():
    """The content-free prompt keeps the options and replaces question and context by "N/A" (hint, caption, image,
    lecture and solution gone), in the problem's own format."""
    problem = PROBLEMS[2]  # a hint-less image question with a caption
    assert build_prompt(content_free(problem), "QCM-A", use_caption=True).prompt == (
        "Question: N/A\nContext: N/A\nOptions: (A) run (B) blue (C) table (D) quickly\nAnswer:")
    assert not content_free(problem).has_image and content_free(problem).choices == problem.choices


@pytest.mark.parametrize("fmt", ["QCM-A", "CQM-A", "QCM-ALE"])
def test_letter_scores_equal_two_explicit_forwards_and_a_subtraction(model, tokenizer, fmt):  # noqa: F811
    """Calibrated letter probabilities equal softmax(log p(letter | prompt) - log p(letter | content-free prompt)),
    each from one unbatched forward (atol 1e-5), whatever the letter format; and they differ from the uncalibrated
    ones, so the calibration is not a no-op."""
    calibrated = evaluate(model, tokenizer, PROBLEMS, EvalConfig(format=fmt, batch_size=3, calibrate=True))
    plain = evaluate(model, tokenizer, PROBLEMS, EvalConfig(format=fmt, batch_size=3))
    for problem in PROBLEMS:
        expected = torch.softmax(_letter_log_probs(model, tokenizer, problem, fmt)
                                 - _letter_log_probs(model, tokenizer, content_free(problem), fmt), dim=-1)
        assert torch.allclose(_probs(calibrated, problem), expected, atol=ATOL)
        assert calibrated[problem.pid].choice == int(expected.argmax())
    moved = max((_probs(calibrated, p) - _probs(plain, p)).abs().max().item() for p in PROBLEMS)
    assert moved > 1e-2


@pytest.fixture(scope="module")
def open_model(tokenizer):  # noqa: F811
    """Gates opened so that image offsets change the scores."""
    adapted = attach_adapter(tiny_model("llama-gqa", vocab_size=len(tokenizer), seed=5),
                             AdapterConfig(adapter_len=3, adapter_layers=2))
    for params in adapter_parameters(adapted).values():
        params["gate"].data.fill_(2.0)
    return adapted


def test_cloze_scores_equal_two_explicit_forwards_with_the_image_on_the_question_only(open_model, tokenizer):  # noqa: F811
    """QCM-T: calibrated probabilities equal softmax(cloze score with the problem's image offset - cloze score of the
    content-free prompt without one), each option from one explicit forward (atol 1e-5); not a no-op."""
    offsets = torch.randn(len(PROBLEMS), open_model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    row = {p.pid: i for i, p in enumerate(PROBLEMS)}

    def offsets_of(batch):
        return offsets[[row[p.pid] for p in batch]]

    config = EvalConfig(format="QCM-T", batch_size=4, calibrate=True)
    calibrated = evaluate(open_model, tokenizer, PROBLEMS, config, offsets=offsets_of)
    plain = evaluate(open_model, tokenizer, PROBLEMS, EvalConfig(format="QCM-T", batch_size=4), offsets=offsets_of)
    for problem in PROBLEMS:
        question = torch.tensor(_reference_scores(open_model, tokenizer, problem, offsets_of([problem])))
        prior = torch.tensor(_reference_scores(open_model, tokenizer, content_free(problem)))
        expected = torch.softmax(question - prior, dim=-1)
        assert torch.allclose(_probs(calibrated, problem), expected, atol=ATOL)
    moved = max((_probs(calibrated, p) - _probs(plain, p)).abs().max().item() for p in PROBLEMS)
    assert moved > 1e-2


def test_calibrate_is_score_mode_only_a_flag_and_part_of_the_run_identity():
    """--calibrate reaches eval scienceqa's and train scienceqa's configs; generate mode has no scores to calibrate
    (refused naming the field); a calibrated run's identity says so, so a partial predictions file of an
    uncalibrated run is not resumed by a calibrated one (and older files, which never had the key, still resume)."""
    assert parse(BY_WORDS[("eval", "scienceqa")], ["--split", "val", "--data", "d", "--out", "o",
                                                   "--calibrate"]).eval.calibrate
    assert parse(BY_WORDS[("train", "scienceqa")], ["--data", "d", "--out", "o", "--calibrate"]).calibrate
    with pytest.raises(ConfigError, match="calibrate: calibrates score mode"):
        EvalConfig(mode="generate", calibrate=True)
    assert EvalConfig(calibrate=True).identity()["calibrate"] is True
    assert "calibrate" not in EvalConfig().identity()


def test_train_scienceqa_validates_calibrated_when_asked(tiny_sqa, tmp_path, monkeypatch):  # noqa: F811
    """train scienceqa --calibrate hands calibration to the validation that chooses best.safetensors (and without it,
    validation is uncalibrated)."""
    seen = []

    class Spy(train_job.ValidationSelector):
        def __post_init__(self) -> None:
            seen.append(self.config.calibrate)
            super().__post_init__()

    monkeypatch.setattr(train_job, "ValidationSelector", Spy)
    base, data = tiny_sqa
    for calibrate in (True, False):
        train_job.train_scienceqa(tiny_train_config(base, data, tmp_path / str(calibrate), calibrate=calibrate,
                                                    val_limit=4))
    assert seen == [True, False]
