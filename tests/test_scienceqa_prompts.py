"""Prompt formats (golden strings of the official wording) and answer extraction."""

import pytest

from mm_adapter.scienceqa.data import Problem, read_problems
from mm_adapter.scienceqa.prompts import (
    ANSWER_PREFIX, PromptFormat, PromptPair, build_prompt, context_text, extract_answer, option_letters,
)

PROBLEM = Problem(
    pid="1", question="Which animal is a mammal?", choices=("trout", "cat", "frog"), answer=1,
    hint="Look at the animals.", image="image.png", caption="Three animals in a row.",
    lecture="Mammals have fur.\nThey feed milk to their young.", solution="A cat has fur.",
)
PLAIN = Problem(pid="2", question="Is ice cold?", choices=("yes", "no"), answer=0)


def test_qcm_a_golden():
    """The default (paper / LLaMA-Adapter) format, exactly; the prompt stops at "Answer:"."""
    pair = build_prompt(PROBLEM)
    assert pair == PromptPair(
        prompt="Question: Which animal is a mammal?\nContext: Look at the animals.\n"
        "Options: (A) trout (B) cat (C) frog\nAnswer:",
        target=" The answer is B.",
    )
    assert pair.text == pair.prompt + pair.target


def test_context_caption_only_in_text_only_setting_and_na_when_empty():
    """The caption joins the context only when asked (the text-only setting); an empty context reads N/A."""
    assert context_text(PROBLEM) == "Look at the animals."
    assert context_text(PROBLEM, use_caption=True) == "Look at the animals. Three animals in a row."
    assert context_text(PLAIN, use_caption=True) == "N/A"


def test_cqm_a_golden_with_caption():
    """CQM-A puts the context first, exactly in the official wording."""
    pair = build_prompt(PLAIN, "CQM-A", use_caption=True)
    assert pair.prompt == "Context: N/A\nQuestion: Is ice cold?\nOptions: (A) yes (B) no\nAnswer:"
    assert pair.target == " The answer is A."


def test_lea_and_ale_golden():
    """LEA: lecture, explanation, then the answer; ALE: answer then "BECAUSE:" (official wording,
    newlines escaped as in the official code)."""
    lecture = "Mammals have fur.\\nThey feed milk to their young."
    assert build_prompt(PROBLEM, "QCM-LEA").target == f" {lecture} A cat has fur. The answer is B."
    assert build_prompt(PROBLEM, "QCM-ALE").target == f" The answer is B. BECAUSE: {lecture} A cat has fur."
    assert "\n" in build_prompt(PROBLEM, "QCM-LEA", escape_newlines=False).target


def test_empty_lecture_and_solution_leave_no_dangling_text():
    """Without lecture and solution, LEA/ALE targets are just the answer sentence (no dangling BECAUSE or spaces)."""
    assert build_prompt(PLAIN, PromptFormat.QCM_ALE).target == " The answer is A."
    assert build_prompt(PLAIN, PromptFormat.QCM_LEA).target == " The answer is A."


@pytest.mark.parametrize("name", ["QCM-A", "QCM->A", "qcm_a", PromptFormat.QCM_A])
def test_format_names_parse(name):
    """Every spelling of a format name (official arrow, dash, underscore, any case, the enum) parses to the same format.
    Every spelling of a format name (official arrow, dash, underscore, any case, the enum) parses to the same format."""
    assert PromptFormat.parse(name) is PromptFormat.QCM_A


def test_unknown_format_is_rejected():
    """An unknown format name is refused, never silently replaced by a default."""
    with pytest.raises(ValueError, match="unknown prompt format"):
        PromptFormat.parse("QCM-XYZ")


def test_option_letters():
    """Options are lettered A, B, C...; zero options is an error."""
    assert option_letters(5) == ["A", "B", "C", "D", "E"]
    with pytest.raises(ValueError):
        option_letters(0)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The answer is B.", 1),
        (" The answer is (C).", 2),
        ("Mammals have fur. The answer is A. The answer is A.", 0),
        ("The answer is A. Actually the answer is B.", None),  # conflicting: never guess
        ("The answer is D.", None),  # out of range for 3 choices
        ("I pick (B) because cats have fur.", 1),
        ("(A) trout (B) cat", None),  # the options echoed back: ambiguous
        ("C", 2),
        ("B. cat", 1),
        ("A cat has fur.", None),  # "A" as an article is not an answer
        ("cat", 1),  # exact choice text
        ("Cat.", 1),
        ("", None),
        ("I don't know.", None),
    ],
)
def test_extract_answer(text, expected):
    """Answer extraction reads one unambiguous answer (letter or exact choice text) and never guesses between
    conflicting ones."""
    assert extract_answer(text, 3, PROBLEM.choices) == expected


def test_extract_answer_without_choices_does_not_match_text():
    """Without the choices, a bare word is not read as an answer."""
    assert extract_answer("cat", 3) is None


def test_every_target_extracts_back_to_its_answer(shared_data):
    """Round trip on the real test split, for every format: the parser reads what we train on."""
    problems = read_problems(shared_data / "scienceqa" / "problems.json")
    tests = [p for p in problems.values() if p.split == "test"]
    for fmt in PromptFormat:
        for p in tests:
            target = build_prompt(p, fmt, use_caption=True).target
            assert target.count(ANSWER_PREFIX) >= 1
            assert extract_answer(target, len(p.choices), p.choices, fmt.answers_by_text) == p.answer, (fmt, p.pid)
