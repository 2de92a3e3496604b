"""Sampling settings of ``generate`` (torch-free, so the command line builds flags from them)."""

from __future__ import annotations

from dataclasses import dataclass

from mm_adapter.fields import check

MAX_NEW_TOKENS = 1 << 20  # absurd at the flag; generation is also bounded by the model's context (generate_text)


@dataclass(frozen=True)
class SamplingConfig:
    """How new tokens are chosen: greedy unless a temperature is asked for. (The original LLaMA-Adapter demo
    sampled at temperature 0.1, top_p 0.75; on a small base its first token is then often a coin toss between a
    newline and end-of-sequence, an empty answer, where greedy answers.)"""

    max_new_tokens: int = 128
    """tokens generated at most"""
    temperature: float = 0.0
    """0: greedy (the most likely token each step, the same answer every time); above 0: sample at this
    temperature with --top-p (the original demo: 0.1)"""
    top_p: float = 0.75
    """when sampling: draw from the smallest set of tokens whose probability reaches top_p"""

    def __post_init__(self) -> None:
        check(self, "max_new_tokens", low=1, high=MAX_NEW_TOKENS, integer=True)
        check(self, "temperature", low=0)
        check(self, "top_p", low=0, low_open=True, high=1)

    def generate_kwargs(self) -> dict:
        if self.temperature <= 0:
            return {"do_sample": False, "max_new_tokens": self.max_new_tokens}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p,
                "max_new_tokens": self.max_new_tokens}
