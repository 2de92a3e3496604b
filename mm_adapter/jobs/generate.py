"""Answer Alpaca-style instructions with the base and one of several adapters, streamed (``mm-adapter generate``).

All adapter files are read and checked against the base up front; switching between them copies
tensors into the loaded model (no base reload). Without an instruction it reads one per line
from stdin; ``:use NAME`` switches adapter. Sampling defaults are the original's (temperature
0.1, top_p 0.75; temperature 0 is greedy).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from ..alpaca import prompt_text
from ..base import load_base
from ..checkpoint import AdapterFile, BaseIdentity, apply_adapter
from ..errors import MMAdapterError
from ..eval.scoring import precision
from ..generate import generate_text
from ..pretrained import adapter_name, check_base, read_pretrained
from .configs import GenerateConfig
from .runtime import prepare


@dataclass
class GenerateResult:
    """The answers in order, and the adapter each was given with (None: the base alone)."""

    answers: list[str] = field(default_factory=list)
    adapters: list[str | None] = field(default_factory=list)


def choose(adapters: dict[str, AdapterFile], name: str | None) -> str | None:
    """The adapter to apply: ``name`` if given, the only one if one, else an error listing the names."""
    if name is None:
        if len(adapters) > 1:
            raise MMAdapterError(f"{len(adapters)} adapters given; choose one with --use ({', '.join(adapters)})")
        return next(iter(adapters), None)
    if name not in adapters:
        known = ", ".join(adapters) or "none given"
        raise MMAdapterError(f"--use {name}: no such adapter (known: {known})")
    return name


def read_all(specs: list[str], model) -> dict[str, AdapterFile]:
    """Read every adapter (file, folder or hub id), by name, and refuse any made for another base, before
    generating anything."""
    identity, adapters = BaseIdentity.of(model), {}
    for spec in specs:
        adapter, name = read_pretrained(spec), adapter_name(spec)
        if name in adapters:
            raise MMAdapterError(f"{spec}: two adapters are named {name!r}; rename one")
        check_base(adapter, identity)
        adapters[name] = adapter
    return adapters


def generate(config: GenerateConfig, lines: Iterable[str] | None = None) -> GenerateResult:
    """Answer ``config.instruction``, or each line of ``lines`` (default: stdin) when there is none."""
    device = prepare(config.model)
    torch.manual_seed(config.seed)
    model, tokenizer = load_base(config.model.base, dtype=config.model.dtype)
    model.to(device)
    adapters = read_all(config.adapter, model)
    current = choose(adapters, config.use)
    if current is not None:
        apply_adapter(model, adapters[current])
    result = GenerateResult()

    def answer(instruction: str, input: str) -> None:
        with precision(model, config.bf16):
            text = generate_text(model, tokenizer, prompt_text(tokenizer, instruction, input), config.sampling,
                                 stream=True, add_special_tokens=False)
        result.answers.append(text)
        result.adapters.append(current)

    if config.instruction is not None:
        answer(config.instruction, config.input)
        return result
    print(f"adapter: {current or 'none'}. One instruction per line; ':use NAME' switches adapter; Ctrl-D quits.",
          file=sys.stderr)
    for line in (sys.stdin if lines is None else lines):
        line = line.strip()
        if line.startswith(":use "):
            try:
                current = choose(adapters, line[5:].strip())
            except MMAdapterError as error:
                print(f"error: {error}", file=sys.stderr)
                continue
            apply_adapter(model, adapters[current])
            print(f"adapter: {current}", file=sys.stderr)
        elif line:
            answer(line, "")
    return result
