"""The demo's question and options, checked as text (torch-free: the command checks them before it loads anything)."""

from __future__ import annotations

from typing import Sequence

from mm_adapter.errors import MMAdapterError
from mm_adapter.scienceqa.data import MAX_CHOICES, MAX_TEXT_CHARS


def _bounded(text: str, what: str) -> str:
    """``text`` stripped, when it has at most ``MAX_TEXT_CHARS`` characters (checked before any tokenising)."""
    if len(text) > MAX_TEXT_CHARS:
        raise MMAdapterError(f"{what} is too long ({len(text):,} characters; at most {MAX_TEXT_CHARS:,})")
    return text.strip()


def check_question(question: str, choices: Sequence[str], context: str = "") -> tuple[str, tuple[str, ...]]:
    """The question and choices stripped, or one line saying what is wrong with them (or with the context)."""
    _bounded(context or "", "the context")
    if len(choices) > MAX_CHOICES:
        raise MMAdapterError(f"at most {MAX_CHOICES} choices (A-Z), got {len(choices)}")
    question = _bounded(question or "", "the question")
    cleaned = tuple(_bounded(c or "", f"choice {i}") for i, c in enumerate(choices, start=1))
    if not question:
        raise MMAdapterError("the question is empty")
    if len(cleaned) < 2:
        raise MMAdapterError(f"need at least 2 choices, got {len(cleaned)}")
    empty = [i + 1 for i, c in enumerate(cleaned) if not c]
    if empty:
        raise MMAdapterError(f"choice {empty[0]} is empty")
    repeated = sorted({c for c in cleaned if cleaned.count(c) > 1})
    if repeated:
        raise MMAdapterError(f"choices must differ: {repeated[0]!r} is given more than once")
    return question, cleaned
