"""Answer Alpaca-style instructions with the base and one of several adapters, streamed (``mm-adapter generate``).

All adapter files are read and checked against the base up front; switching between them copies
tensors into the loaded model (no base reload). Another training method's folder (``--method``) is
loaded through ``inference.loading.load_answering`` and given alone: it cannot be switched that way.
Without an instruction it reads one per line from stdin; ``:use NAME`` switches adapter. Decoding is greedy unless
``--temperature`` asks for sampling; an answer with no text is followed by a note on stderr saying so (never a
silent blank line).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from mm_adapter.data.alpaca import prompt_text
from mm_adapter.errors import MMAdapterError
from mm_adapter.inference.config import SamplingConfig
from mm_adapter.inference.generate import generate_text
from mm_adapter.inference.loading import load_answering
from mm_adapter.inference.precision import precision
from mm_adapter.jobs.configs.answering import GenerateConfig
from mm_adapter.jobs.runtime import precision_line, prepare
from mm_adapter.methods.config import LLAMA_ADAPTER
from mm_adapter.model.adapter_file import AdapterFile, BaseIdentity, apply_adapter
from mm_adapter.model.base import load_base
from mm_adapter.pretrained import adapter_name, check_base, locate_adapter, read_pretrained


@dataclass
class GenerateResult:
    """The answers in order, and the adapter each was given with (None: the base alone)."""

    answers: list[str] = field(default_factory=list)
    adapters: list[str | None] = field(default_factory=list)


def empty_answer_note(sampling: SamplingConfig) -> str:
    """The line shown after an answer without text, saying what may get one."""
    if sampling.temperature > 0:
        how = (f"sampled at --temperature {sampling.temperature:g}, it drew an end first; another --seed, or "
               "--temperature 0 (greedy), may answer")
    else:
        how = "greedy decoding ends it at once; rephrase the instruction, or sample with --temperature 0.7"
    return f"note: the answer is empty (the model produced no text: {how})"


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


def method_folder(specs: list[str]) -> tuple[str, str, Path] | None:
    """``(name, method, folder)`` of the adapter of another training method among ``specs``, or None when all are
    LLaMA-Adapters; such an adapter cannot be switched by copying tensors, so it must be the only one."""
    for spec in specs:
        method, path = locate_adapter(spec, say=lambda line: print(line, file=sys.stderr))  # says a run's choice
        if method != LLAMA_ADAPTER:
            if len(specs) > 1:
                raise MMAdapterError(f"{spec}: a {method} adapter is given alone (--use switches between "
                                     f"{LLAMA_ADAPTER} adapters only)")
            return adapter_name(spec), method, path
    return None


def _load(config: GenerateConfig, device: torch.device) -> tuple[nn.Module, object, dict[str, AdapterFile], str | None]:
    """The model with the chosen adapter applied, its tokenizer, the adapters ``:use`` switches between, the
    chosen one's name."""
    other = method_folder(config.adapter)
    if other is not None:
        name, method, path = other
        model, tokenizer, _ = load_answering(config.model.base, method, path, device, config.model.dtype,
                                             say=lambda line: print(line, file=sys.stderr))
        return model, tokenizer, {}, choose({name: None}, config.use)
    model, tokenizer = load_base(config.model.base, dtype=config.model.dtype)
    model.to(device)
    adapters = read_all(config.adapter, model)
    current = choose(adapters, config.use)
    if current is not None:
        apply_adapter(model, adapters[current])
    return model, tokenizer, adapters, current


def _stdin_lines() -> Iterator[str | bytes]:
    """Lines of stdin as UTF-8 text, decoded here from its bytes (the locale's decoder would raise mid-loop, or let
    lone surrogates through to the tokenizer); a line that is not UTF-8 comes as its bytes, to be refused."""
    source = getattr(sys.stdin, "buffer", None)
    for raw in (sys.stdin if source is None else source):
        try:
            yield raw.decode("utf-8") if isinstance(raw, bytes) else raw
        except UnicodeDecodeError:
            yield raw


def _not_text(line: str | bytes) -> str | None:
    """Why a line is not text (None when it is): bytes that are not UTF-8, or a str holding lone surrogates."""
    try:
        (line.decode("utf-8") if isinstance(line, bytes) else line.encode("utf-8"))
    except UnicodeError as error:
        if isinstance(line, bytes):
            return f"byte 0x{line[error.start]:02x} at column {error.start + 1}"
        return f"character {ascii(line[error.start])} at column {error.start + 1}"
    return None


def generate(config: GenerateConfig, lines: Iterable[str] | None = None) -> GenerateResult:
    """Answer ``config.instruction``, or each line of ``lines`` (default: stdin) when there is none."""
    device = prepare(config.model)
    torch.manual_seed(config.seed)
    model, tokenizer, adapters, current = _load(config, device)
    print(precision_line(model, config.bf16, device), file=sys.stderr)
    result = GenerateResult()

    def answer(instruction: str, input: str) -> None:
        with precision(model, config.bf16):
            text = generate_text(model, tokenizer, prompt_text(tokenizer, instruction, input), config.sampling,
                                 stream=True, add_special_tokens=False)
        if not text.strip():
            print(empty_answer_note(config.sampling), file=sys.stderr, flush=True)
        result.answers.append(text)
        result.adapters.append(current)

    if config.instruction is not None:
        answer(config.instruction, config.input)
        return result
    print(f"adapter: {current or 'none'}. One instruction per line; ':use NAME' switches adapter; Ctrl-D quits.",
          file=sys.stderr)
    for number, line in enumerate(_stdin_lines() if lines is None else lines, start=1):
        problem = _not_text(line)
        if problem:
            print(f"error: {'stdin ' if lines is None else ''}line {number} is not UTF-8 text ({problem}); skipped",
                  file=sys.stderr)
            continue
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
