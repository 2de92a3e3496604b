"""Prompt formats of the ScienceQA paper (Lu et al. 2022), as LLaMA-Adapter fine-tunes on them.

A format "INPUT-OUTPUT" names the order of the prompt parts (Q question, C context, M options)
and of the target (A answer, L lecture, E explanation/solution). The wording follows the official
`base_prompt.py`; the prompt ends at "Answer:" so the target can be trained/scored on its own.

QCM-T is ours: the QCM prompt, but the target states the answer by its option *text*
("The answer is rough."), a cloze. A small model cannot bind an option to its letter (SmolLM2-135M
scores letters below chance zero-shot and barely learns them from 1.5K problems); the option text
is what its pretraining knows how to rank, and score mode then compares the options' texts.
"""

from __future__ import annotations

import dataclasses
import re
import string
from dataclasses import dataclass
from enum import Enum
from typing import Sequence

from mm_adapter.scienceqa.data import Problem

ANSWER_PREFIX = "The answer is"
CONTENT_FREE = "N/A"  # the question of the content-free prompt (calibrated scoring); an empty context reads the same


class PromptFormat(str, Enum):
    QCM_A = "QCM-A"  # the paper's / LLaMA-Adapter's default
    CQM_A = "CQM-A"
    QCM_LEA = "QCM-LEA"  # lecture, explanation, then the answer (chain of thought)
    QCM_ALE = "QCM-ALE"  # the answer, then "BECAUSE: lecture explanation"
    QCM_T = "QCM-T"  # the answer stated by its option text (cloze)

    @property
    def answers_by_text(self) -> bool:
        return self is PromptFormat.QCM_T

    @property
    def answer_first(self) -> bool:
        """The target starts with "The answer is", where score mode reads it (all but QCM-LEA, whose answer follows
        the lecture and solution the model would first have to write)."""
        return self is not PromptFormat.QCM_LEA

    @classmethod
    def parse(cls, name: "str | PromptFormat") -> "PromptFormat":
        """Accept "QCM-A", "QCM->A" or "qcm_a"."""
        if isinstance(name, PromptFormat):
            return name
        key = re.sub(r"[-_>\s]+", "-", str(name).strip().upper())
        try:
            return cls(key)
        except ValueError:
            raise ValueError(f"unknown prompt format {name!r}; choose from {', '.join(f.value for f in cls)}") from None


@dataclass(frozen=True)
class PromptPair:
    """`prompt + target` is the full training text; generation starts after `prompt`."""

    prompt: str
    target: str

    @property
    def text(self) -> str:
        return self.prompt + self.target


def content_free(problem: Problem) -> Problem:
    """The problem with its content taken out: question "N/A", no hint, caption, image, lecture or solution; the
    same options. Its prompt (``Question: N/A\\nContext: N/A\\nOptions: (A) ...\\nAnswer:``) measures how much the
    model favours each option whatever the question, which calibrated scoring subtracts."""
    return dataclasses.replace(problem, question=CONTENT_FREE, hint="", caption=None, image=None, image_bytes=None,
                               lecture="", solution="")


def option_letters(n: int) -> list[str]:
    """["A", "B", ...] for n choices (ScienceQA has at most 5)."""
    if not 1 <= n <= 26:
        raise ValueError(f"need 1..26 choices, got {n}")
    return list(string.ascii_uppercase[:n])


def context_text(problem: Problem, use_caption: bool = False) -> str:
    """The hint, plus the image caption in the text-only setting; "N/A" when both are empty."""
    parts = [problem.hint, problem.caption if use_caption and problem.caption else ""]
    return " ".join(parts).strip() or "N/A"


def options_text(choices: Sequence[str]) -> str:
    return " ".join(f"({letter}) {choice}" for letter, choice in zip(option_letters(len(choices)), choices))


def stated_answer(choices: Sequence[str], index: int, fmt: "str | PromptFormat" = PromptFormat.QCM_A) -> str:
    """"The answer is B." or, for a text format, "The answer is <choice text>."."""
    if not PromptFormat.parse(fmt).answers_by_text:
        return f"{ANSWER_PREFIX} {option_letters(len(choices))[index]}."
    named = _one_line(choices[index].strip())
    return f"{ANSWER_PREFIX} {named}" + ("" if named.endswith((".", "!", "?")) else ".")


def _join(*parts: str) -> str:
    """Join non-empty parts with single spaces (official: empty lecture/solution leave no gap)."""
    return " ".join(p.strip() for p in parts if p and p.strip())


def build_prompt(
    problem: Problem,
    fmt: "str | PromptFormat" = PromptFormat.QCM_A,
    use_caption: bool = False,
    escape_newlines: bool = True,
) -> PromptPair:
    """Prompt and target for one problem. `escape_newlines` writes lecture/solution newlines as a
    literal "\\n", as the official code does to keep the explanation one paragraph.

    QCM-LEA / QCM-ALE with an empty lecture or solution (most ScienceQA problems have neither) leave no gap; with
    neither, the target is the answer alone (no dangling "BECAUSE:"), so such a problem trains as QCM-A."""
    fmt = PromptFormat.parse(fmt)
    question, context = problem.question, context_text(problem, use_caption)
    options = options_text(problem.choices)
    if fmt is PromptFormat.CQM_A:
        prompt = f"Context: {context}\nQuestion: {question}\nOptions: {options}\nAnswer:"
    else:
        prompt = f"Question: {question}\nContext: {context}\nOptions: {options}\nAnswer:"
    answer = stated_answer(problem.choices, problem.answer, fmt)
    lecture, solution = problem.lecture, problem.solution
    if escape_newlines:
        lecture, solution = lecture.replace("\n", "\\n"), solution.replace("\n", "\\n")
    if fmt is PromptFormat.QCM_LEA:
        target = _join(lecture, solution, answer)
    elif fmt is PromptFormat.QCM_ALE and _join(lecture, solution):
        target = _join(answer, "BECAUSE:", lecture, solution)
    else:
        target = answer
    return PromptPair(prompt=prompt, target=" " + target)


_STATED = re.compile("(?i:" + ANSWER_PREFIX + r")\s*:?\s*\(?([A-Z])\)?(?![A-Za-z])")
_PAREN = re.compile(r"\(([A-Z])\)")
_LEADING = re.compile(r"^\s*\(?([A-Z])(?:[.):]\s*|\s*$)")


def _single(letters: list[str], n_choices: int) -> int | None:
    """The index of the one distinct letter found, if it is a valid option; None otherwise."""
    found = set(letters)
    if len(found) != 1:
        return None
    index = ord(found.pop()) - ord("A")
    return index if index < n_choices else None


def _one_line(text: str) -> str:
    """A choice stated as an answer keeps to one line (letter closings span two), as lectures do."""
    return text.replace("\n", "\\n")


def _bare(text: str) -> str:
    return _one_line(text.strip().removesuffix(".").strip())


def _matching_choice(text: str, choices: Sequence[str]) -> int | None:
    """The one choice whose text equals ``text`` (surrounding blanks and one final period ignored);
    failing that, the one equal up to case. Capitalisation questions ("Dear Pablo," vs "dear Pablo,")
    need the exact match first."""
    for key in (str, str.lower):
        matches = [i for i, c in enumerate(choices) if key(_bare(c)) == key(_bare(text))]
        if matches:
            return matches[0] if len(matches) == 1 else None
    return None


def extract_answer(text: str, n_choices: int, choices: Sequence[str] | None = None,
                   by_text: bool = False) -> int | None:
    """The choice index a generation states, or None when it cannot be read unambiguously.

    In order: "The answer is X" (official), a lone "(X)", a leading "X." / "X)" / "X", then the
    exact text of one choice (when `choices` is given). Conflicting letters give None: never guess.
    ``by_text`` (a text format, e.g. QCM-T): only "The answer is <choice text>" or the bare text of one
    choice counts; letters are not looked for (the choice "A pencil" would otherwise read as "A").
    """
    if by_text:
        if not choices:
            raise ValueError("by_text needs the choices")
        line = text.strip().split("\n", 1)[0]
        stated = re.match(r"(?i:" + ANSWER_PREFIX + r")\s*:?\s*(.*)$", line.strip())
        return _matching_choice(stated.group(1) if stated else line, choices)
    stated = _STATED.findall(text)
    if stated:
        return _single(stated, n_choices)
    for pattern in (_PAREN, _LEADING):
        letters = pattern.findall(text)
        if letters:
            return _single(letters, n_choices)
    return _matching_choice(text, choices) if choices else None
