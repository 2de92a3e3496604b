"""Alpaca instruction data: reading, the two prompt templates, and tokenisation with loss on the response only.

Prompt and response are tokenised separately and concatenated, so the label boundary is exact and
generation (which tokenises the prompt alone, see :func:`prompt_text`) sees exactly the prompt ids
the adapter was trained on. The templates are the original LLaMA-Adapter/Stanford Alpaca ones.

Bounds: each field has at most ``MAX_TEXT_CHARS`` characters, checked before anything is
tokenised (a longer one is a bad record: refused in one line, or skipped and counted with
``skip_bad``); an example is then cut to ``max_seq_len`` tokens, or to the model's context when
that is given and shorter (right-truncation; a record whose prompt alone fills it is dropped and
counted). Only a regular file of at most ``MAX_DATA_BYTES`` is
read (never a FIFO or device), through ``textio``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import MMAdapterError
from .textio import read_text
from .train_data import IGNORE_INDEX, Example

PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)
FIELDS = ("instruction", "input", "output")
MAX_TEXT_CHARS = 20_000  # characters in one field (the same bound as mm_adapter.scienceqa.data's)
MAX_DATA_BYTES = 256 * 2**20  # a data file larger than this is refused before it is read (52K Alpaca: 22 MB)


@dataclass(frozen=True)
class AlpacaRecord:
    instruction: str
    input: str
    output: str


@dataclass
class AlpacaData:
    """Records read from one file, and how many bad ones were skipped (only with ``skip_bad``)."""

    path: Path
    records: list[AlpacaRecord]
    skipped: int = 0


def format_prompt(instruction: str, input: str = "") -> str:
    """The Alpaca prompt, ending in ``### Response:``; the input block only when the input is non-empty."""
    if input.strip():
        return PROMPT_WITH_INPUT.format(instruction=instruction, input=input)
    return PROMPT_NO_INPUT.format(instruction=instruction)


def prompt_text(tokenizer, instruction: str, input: str = "") -> str:
    """BOS (as text, when the tokenizer has one) + prompt; tokenise with ``add_special_tokens=False``."""
    return (tokenizer.bos_token or "") + format_prompt(instruction, input)


def _raw_items(path: Path) -> list[tuple[int, object]]:
    """(record index, parsed value or the JSON error) for a JSON list or a JSONL file."""
    text = read_text(path, "data file", MAX_DATA_BYTES)  # a FIFO or device is refused before it is opened
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise MMAdapterError(f"{path}: not valid JSON (line {error.lineno}, column {error.colno}: "
                                 f"{error.msg})") from None
        return list(enumerate(data))
    items: list[tuple[int, object]] = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append((len(items), json.loads(line)))
        except json.JSONDecodeError as error:
            items.append((len(items), MMAdapterError(f"line {line_no} is not JSON ({error.msg})")))
    return items


def _record(value: object) -> AlpacaRecord:
    if isinstance(value, MMAdapterError):
        raise value
    if not isinstance(value, dict):
        raise MMAdapterError(f"expected an object with {', '.join(FIELDS)}, found {type(value).__name__}")
    for name in FIELDS:
        if name not in value:
            raise MMAdapterError(f"field {name!r} is missing")
        if not isinstance(value[name], str):
            raise MMAdapterError(f"field {name!r} is {type(value[name]).__name__}, expected a string")
        if len(value[name]) > MAX_TEXT_CHARS:
            raise MMAdapterError(f"field {name!r} has {len(value[name]):,} characters, over the limit of "
                                 f"{MAX_TEXT_CHARS:,} (MAX_TEXT_CHARS)")
    if not value["instruction"].strip():
        raise MMAdapterError("field 'instruction' is empty")
    if not value["output"].strip():
        raise MMAdapterError("field 'output' is empty")
    return AlpacaRecord(value["instruction"], value["input"], value["output"])


def read_alpaca(path: str | Path, skip_bad: bool = False) -> AlpacaData:
    """Read a JSON list or JSONL of ``{instruction, input, output}``.

    A bad record raises :class:`MMAdapterError` naming file, record index and field, unless
    ``skip_bad``, which drops it and counts it in ``skipped``.
    """
    path = Path(path)
    records, skipped = [], 0
    for index, value in _raw_items(path):
        try:
            records.append(_record(value))
        except MMAdapterError as error:
            if not skip_bad:
                raise MMAdapterError(f"{path}: record {index}: {error} (use --skip-bad to skip bad records)") from None
            skipped += 1
    if not records:
        raise MMAdapterError(f"{path}: no usable records")
    return AlpacaData(path, records, skipped)


def encode_record(tokenizer, record: AlpacaRecord, max_seq_len: int) -> Example | None:
    """``[bos] prompt response [eos]`` ids, labels only on response + EOS; ``None`` if truncation leaves no label."""
    prompt_ids = tokenizer(prompt_text(tokenizer, record.instruction, record.input),
                           add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(record.output, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        response_ids = response_ids + [tokenizer.eos_token_id]
    input_ids = (prompt_ids + response_ids)[:max_seq_len]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + response_ids)[:max_seq_len]
    if all(label == IGNORE_INDEX for label in labels[1:]):
        return None
    return {"input_ids": input_ids, "labels": labels}


def encode_alpaca(tokenizer, records: list[AlpacaRecord], max_seq_len: int = 512,
                 context: int | None = None) -> tuple[list[Example], int]:
    """Tokenise records, each cut to ``max_seq_len`` tokens or the model's ``context`` when that is shorter;
    returns the examples and how many were dropped because the prompt fills that bound."""
    limit = min(max_seq_len, context or max_seq_len)
    examples = [encode_record(tokenizer, record, limit) for record in records]
    kept = [example for example in examples if example is not None]
    return kept, len(examples) - len(kept)
