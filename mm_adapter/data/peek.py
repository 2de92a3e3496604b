"""What an instruction-data file is, from its first bytes and first records, in milliseconds.

``datasets`` reads a whole file into Arrow before anything can be said about it (tens of seconds for a
ScienceQA ``problems.json`` handed to ``train alpaca``), and the job module that calls it imports torch
first. So the command peeks before it imports anything heavy: the file is a regular file; a ``.parquet``
starts with parquet's magic; anything else is a JSON list or JSONL whose first records are objects with text
fields, some with ``instruction`` and ``output``. A ScienceQA ``problems.json`` (pid -> problem) is
recognised and named as such. Torch-free; whole-file checks stay with the reader (``alpaca.read_alpaca``).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from mm_adapter.errors import MMAdapterError
from mm_adapter.files.text import json_problem, json_type, loads_json, regular_file_size

FIELDS = ("instruction", "input", "output")
PEEK_BYTES = 1 << 16  # the first 64 KiB: a few dozen Alpaca records
PEEK_RECORDS = 8  # records whose shape is checked
PARQUET_MAGIC = b"PAR1"
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")  # "org/name" (or a bare legacy "name")
FILE_SUFFIXES = (".json", ".jsonl", ".parquet")  # a name ending so is a local file, never a hub id


def is_hub_dataset(source: str) -> bool:
    """Whether ``--data`` names a hub dataset: shaped like ``org/name`` and no such file here (a local path wins,
    as in datasets; a name ending in .json, .jsonl or .parquet is always a file, so a typo says "no such file")."""
    return (HUB_ID.fullmatch(source) is not None and not source.lower().endswith(FILE_SUFFIXES)
            and not os.path.lexists(source))


def shape_problem(value: object) -> str | None:
    """Why one parsed JSON record cannot be a row of text fields, or None."""
    if not isinstance(value, dict):
        return f"is a JSON {json_type(value)}, expected an object with {', '.join(FIELDS)}"
    for name in FIELDS:
        if value.get(name) is not None and not isinstance(value[name], str):
            return f"field {name!r} is a JSON {json_type(value[name])}, expected a string"
    return None


def _head(path: Path) -> str:
    with open(path, "rb") as handle:  # a regular file (checked): opening cannot block
        data = handle.read(PEEK_BYTES)
    return data.decode("utf-8", errors="ignore").removeprefix("\ufeff")  # a cut multi-byte character is dropped


def _first_values(text: str, whole: bool) -> list[object]:
    """The complete JSON values at the start of a JSON list (``[a, b, ...``) or of JSONL, up to PEEK_RECORDS.
    Text that is not JSON is refused as the reader would (line and column; JSONL: record and line), but only where
    the peek cannot have cut it: the ``whole`` file, or a JSONL line that ends before the peek does."""
    if not text.lstrip().startswith("["):
        lines = text.split("\n")
        complete = lines if whole else lines[:-1]  # the last line read may be cut
        values = []
        for number, line in enumerate(complete, start=1):
            if len(values) == PEEK_RECORDS:
                break
            if line.strip():
                try:
                    values.append(loads_json(line))
                except ValueError as error:  # the shared checks: syntax, NaN, a lone surrogate, too deep
                    raise MMAdapterError(f"record {len(values)}: line {number} is not JSON ({json_problem(error)})"
                                         ) from None
        return values
    decoder, values, position = json.JSONDecoder(), [], text.index("[") + 1
    while len(values) < PEEK_RECORDS:
        while position < len(text) and text[position] in " \t\r\n,":
            position += 1
        if position >= len(text) or text[position] == "]":
            break
        try:
            value, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            if not whole:
                break  # perhaps cut by the peek: the reader will say
            raise MMAdapterError(f"data file is not valid JSON ({error.msg} at line {error.lineno}, column "
                                 f"{error.colno})") from None
        values.append(value)
    return values


def _object_of_objects(text: str) -> str | None:
    """Why a file that starts ``{"key": {`` is not instruction records: ScienceQA's problems.json (pid -> problem)
    or another mapping of objects (captions.json, a predictions file)."""
    start = text.lstrip()
    if not start.startswith("{"):
        return None
    try:
        key, end = json.JSONDecoder().raw_decode(start, start.index('"')) if '"' in start[:64] else (None, 0)
    except json.JSONDecodeError:
        return None
    rest = start[end:].lstrip()
    if not isinstance(key, str) or not rest.startswith(":") or not rest[1:].lstrip().startswith(("{", "[")):
        return None
    inner = rest[1:PEEK_BYTES]
    if '"question"' in inner and '"choices"' in inner:
        return ("is a ScienceQA problems.json (pid -> problem), not instruction records; train on ScienceQA with "
                "`mm-adapter train scienceqa --data FOLDER` (the folder holding it)")
    return (f"is one JSON object (its first key is {key!r}), not instruction records: expected a JSON list or JSONL "
            f"of {{{', '.join(FIELDS)}}} objects")


def check_local_split(path: str | Path, split: str) -> None:
    if split != "train":
        raise MMAdapterError(f"{path}: a local data file is one split, 'train'; --split {split!r} is for hub datasets")


def peek_alpaca_file(path: str | Path) -> None:
    """Refuse, from its first bytes and records only, a local file that cannot be Alpaca-style records; one line
    naming the file (and the record)."""
    path = Path(path)
    size = regular_file_size(path, "data file")  # missing, a folder, a FIFO: one line
    if path.suffix.lower() == ".parquet":
        with open(path, "rb") as handle:
            magic = handle.read(len(PARQUET_MAGIC))
        if magic != PARQUET_MAGIC:
            raise MMAdapterError(f"{path}: is not a parquet file (it does not start with {PARQUET_MAGIC!r})")
        return
    if size == 0 or not (text := _head(path)).strip():
        raise MMAdapterError(f"{path}: no records (the file is empty)")
    first = text.lstrip()[:1]
    if first not in "[{":
        shown = text.lstrip()[:16]
        raise MMAdapterError(f"{path}: is not a JSON list or JSONL file of records (it starts with {shown!r})")
    problem = _object_of_objects(text) if not _is_jsonl(text) else None
    if problem:
        raise MMAdapterError(f"{path}: {problem}")
    try:
        values = _first_values(text, whole=size <= PEEK_BYTES)
    except MMAdapterError as error:
        raise MMAdapterError(f"{path}: {error}") from None
    if not values and size <= PEEK_BYTES and text.lstrip().startswith("["):
        raise MMAdapterError(f"{path}: no records (an empty list)")
    if values and all(value == {} for value in values) and size <= PEEK_BYTES:
        raise MMAdapterError(f"{path}: no records (only empty JSON objects, none with instruction, input and output)")
    for index, value in enumerate(values):
        problem = shape_problem(value)
        if problem:
            raise MMAdapterError(f"{path}: record {index}: {problem}")
    if values and not any(isinstance(v, dict) and "instruction" in v and "output" in v for v in values):
        keys = ", ".join(map(str, values[0])) or "none"
        raise MMAdapterError(f"{path}: none of the first {len(values)} records has the fields instruction and output "
                             f"(record 0 has: {keys}); expected {{{', '.join(FIELDS)}}} records")


def _is_jsonl(text: str) -> bool:
    """Whether the first line is a whole JSON object (JSONL), not the start of one object spread over lines."""
    line = text.lstrip().split("\n", 1)[0]
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False

