"""QCM-T, the cloze format: the answer stated by its option text, trained and scored as such.

Score mode is checked against an explicit per-option forward (full logits of the whole text, the
option's tokens found by decoding), so batching all options of a batch in one padded forward, the
LM head at scored positions only, and the per-row image offsets cannot change a score. Generate mode
reads the option text and never a letter; the format an adapter was trained on travels in its file.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from mm_adapter import AdapterConfig, adapter_parameters, attach_adapter, prompt_offset, read_adapter, save_adapter
from mm_adapter.data.problems import encode_problem
from mm_adapter.eval.config import EvalConfig
from mm_adapter.eval.run import evaluate, resolve_format
from mm_adapter.inference.scoring import choice_scores, option_text_log_probs
from mm_adapter.model.adapter_file import PROMPT_FORMAT_KEY
from mm_adapter.scienceqa.data import Problem
from mm_adapter.scienceqa.prompts import PromptFormat, build_prompt, extract_answer, stated_answer
from mm_adapter.training.batches import IGNORE_INDEX
from test_eval_run import ATOL, PROBLEMS, make_tokenizer, single_thread  # noqa: F401  (fixture)
from tiny import FAMILIES, GEMMA3, randomise_norms, tiny_model

FMT = "QCM-T"


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    """Adapter gates opened so that image offsets matter."""
    model = attach_adapter(tiny_model("llama-gqa", vocab_size=len(tokenizer), seed=5),
                           AdapterConfig(adapter_len=3, adapter_layers=2))
    for params in adapter_parameters(model).values():
        params["gate"].data.fill_(2.0)
    return model


def _reference_scores(model, tokenizer, problem: Problem, offset: torch.Tensor | None = None) -> list[float]:
    """Each option alone: full logits of the whole text; mean log-prob of the tokens after the prefix."""
    prompt = build_prompt(problem, FMT, use_caption=True).prompt
    head = len(tokenizer(prompt + " The answer is").input_ids)
    scores = []
    for index in range(len(problem.choices)):
        ids = tokenizer(prompt + " " + stated_answer(problem.choices, index, FMT), return_tensors="pt").input_ids
        assert tokenizer.decode(ids[0, :head]) == prompt + " The answer is"  # the BPE splits at the prefix here
        context = contextlib.nullcontext() if offset is None else prompt_offset(model, offset)
        with torch.no_grad(), context:
            log_probs = model(input_ids=ids).logits[0].log_softmax(-1)
        targets = ids[0, head:]
        scores.append(log_probs[torch.arange(head - 1, ids.shape[1] - 1), targets].mean().item())
    return scores


def test_prompt_states_the_answer_by_its_text():
    """QCM-T's target states the option text (prompt unchanged from QCM-A, no doubled period); QCM-A states the letter;
    format names parse loosely."""
    problem = Problem("q", "Which is rough?", ("bark", "silk", "It is smooth."), 0)
    assert build_prompt(problem, FMT).target == " The answer is bark."
    assert build_prompt(problem, FMT).prompt == build_prompt(problem, "QCM-A").prompt
    assert stated_answer(problem.choices, 2, FMT) == "The answer is It is smooth."  # no doubled period
    assert stated_answer(problem.choices, 2, "QCM-A") == "The answer is C."
    assert PromptFormat.parse("qcm->t").answers_by_text and not PromptFormat.QCM_A.answers_by_text


def test_training_labels_cover_exactly_the_stated_answer(tokenizer):
    """A training example's labels cover exactly the stated answer text and the EOS, nothing of the prompt."""
    example = encode_problem(tokenizer, PROBLEMS[0], FMT)
    labelled = [t for t, label in zip(example["input_ids"], example["labels"]) if label != IGNORE_INDEX]
    assert tokenizer.decode(labelled, skip_special_tokens=True) == " The answer is cat."
    assert labelled[-1] == tokenizer.eos_token_id


def test_score_equals_explicit_per_option_forward(model, tokenizer):
    """Cloze scores of all options in one forward (each question's options side by side after its prompt) equal an
    explicit per-option forward (atol 1e-5); padding columns are -inf."""
    scores = option_text_log_probs(model, tokenizer, [build_prompt(p, FMT, True).prompt for p in PROBLEMS],
                                   [p.choices for p in PROBLEMS])
    for row, problem in enumerate(PROBLEMS):
        reference = torch.tensor(_reference_scores(model, tokenizer, problem))
        assert torch.allclose(scores[row, :len(problem.choices)], reference, atol=ATOL)
        assert torch.isinf(scores[row, len(problem.choices):]).all()


@pytest.mark.parametrize("family, attention, overrides", [
    ("llama-gqa", "eager", {}),  # eager attention adds its mask: a prepared one must be additive there
    ("mistral-gqa", "sdpa", {"sliding_window": 6}),  # every layer slides, over a window shorter than the prompts
    ("qwen2-gqa", "eager", {"use_sliding_window": True, "sliding_window": 6, "max_window_layers": 2}),  # mixed layers
    ("gemma3", "sdpa", {}),  # sliding and global layers alternating, a window of 4, a rotary base per layer kind
    ("gemma3", "eager", {}),
])
def test_one_forward_reads_each_option_as_alone_whatever_the_attention(tokenizer, family, attention, overrides):
    """Every option sees the prompt and itself only, at its own positions, under each attention implementation and
    sliding-window layout (the mask score mode prepares must say what the model's own masks would): equal to an
    explicit per-option forward, which builds its masks the model's own way."""
    model = tiny_model(family, vocab_size=len(tokenizer), seed=6, attn_implementation=attention,
                       rows={**FAMILIES, "gemma3": GEMMA3}, **overrides)
    if family == "gemma3":
        randomise_norms(model)
    model = attach_adapter(model, AdapterConfig(adapter_len=3, adapter_layers=2))
    for params in adapter_parameters(model).values():
        params["gate"].data.fill_(2.0)
    scores = option_text_log_probs(model, tokenizer, [build_prompt(p, FMT, True).prompt for p in PROBLEMS],
                                   [p.choices for p in PROBLEMS])
    for row, problem in enumerate(PROBLEMS):
        reference = torch.tensor(_reference_scores(model, tokenizer, problem))
        assert torch.allclose(scores[row, :len(problem.choices)], reference, atol=ATOL)


def test_offsets_reach_every_option_of_their_own_row_only(model, tokenizer):
    """Per-row image offsets reach every option of their own row only, and change the scores."""
    problems = PROBLEMS[:3]
    offsets = torch.randn(3, model.config.hidden_size, generator=torch.Generator().manual_seed(0)) * 5
    prompts = [build_prompt(p, FMT, True).prompt for p in problems]
    scores = choice_scores(model, tokenizer, prompts, [p.choices for p in problems], FMT, offsets)
    for row, problem in enumerate(problems):
        reference = torch.tensor(_reference_scores(model, tokenizer, problem, offsets[row: row + 1]))
        assert torch.allclose(scores[row, :len(problem.choices)], reference, atol=ATOL)
    plain = choice_scores(model, tokenizer, prompts, [p.choices for p in problems], FMT)
    assert not torch.allclose(plain, scores, atol=1e-3)


def test_score_mode_answers_with_the_option_text_and_batching_does_not_matter(model, tokenizer):
    """Score mode in QCM-T answers with the stated option text; batch size changes neither choices nor probabilities."""
    one = evaluate(model, tokenizer, PROBLEMS, EvalConfig(format=FMT, batch_size=1))
    many = evaluate(model, tokenizer, PROBLEMS, EvalConfig(format=FMT, batch_size=4))
    for problem in PROBLEMS:
        answer = many[problem.pid]
        assert answer.choice == one[problem.pid].choice
        assert torch.allclose(torch.tensor(answer.probs), torch.tensor(one[problem.pid].probs), atol=ATOL)
        assert answer.output == stated_answer(problem.choices, answer.choice, FMT)


@pytest.mark.parametrize("text, expected", [
    ("The answer is A pencil.", 0),  # the text, not the letter "A"
    ("the answer is: a pen", 1),
    ("A pen.", 1),
    ("The answer is B.", None),  # a letter is not an answer in a text format
    ("The answer is a crayon.", None),
    ("", None),
])
def test_generated_text_is_read_by_option_text_only(text, expected):
    """Generate mode in a text format reads the option text, never a letter; an unknown text is no answer."""
    assert extract_answer(text, 2, ("A pencil", "A pen"), by_text=True) == expected


def test_adapter_file_records_its_format_and_explicit_choice_wins(model, tmp_path):
    """The format an adapter was trained on travels in its file and is used by default; an explicit other format wins,
    with a note."""
    path = save_adapter(model, tmp_path / "cloze.safetensors", extra_metadata={PROMPT_FORMAT_KEY: "QCM-T"})
    plain = save_adapter(model, tmp_path / "plain.safetensors")
    assert read_adapter(path).prompt_format == "QCM-T" and read_adapter(plain).prompt_format is None
    notes: list[str] = []
    assert resolve_format(None, path, notes.append) == "QCM-T" and not notes
    assert resolve_format("QCM-A", path, notes.append) == "QCM-A"
    assert notes == ["note: cloze.safetensors was trained on QCM-T; answering in QCM-A as asked"]
    assert resolve_format(None, plain) == "QCM-A" and resolve_format(None, None) == "QCM-A"


def test_two_line_choices_are_stated_on_one_line_and_read_back_with_their_case():
    """A choice with a newline is stated on one line and read back to the right option, case included."""
    choices = ("See you soon,\nJanet", "See You Soon,\nJanet")
    stated = stated_answer(choices, 1, FMT)
    assert "\n" not in stated and stated == "The answer is See You Soon,\\nJanet."
    assert extract_answer(stated, 2, choices, by_text=True) == 1
    assert extract_answer(stated_answer(choices, 0, FMT), 2, choices, by_text=True) == 0
