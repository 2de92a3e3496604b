"""The one reader of the text and JSON files the model side is handed (configs, params.json, adapter configs).

Every failure is one :class:`MMAdapterError` line naming the file: missing, unreadable, not a
regular file, too large, not UTF-8 (with the byte's line), not JSON (with line and column), or
JSON of the wrong kind. A FIFO, a device or a folder is refused from its ``stat``, before it is
opened for reading: reading a FIFO blocks forever and ``/dev/zero`` never ends. Torch-free, so
anything may import it.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from mm_adapter.errors import MMAdapterError

MAX_TEXT_BYTES = 64 << 20  # configs are kilobytes; the largest tokenizer.json files are ~35 MB
_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
_JSON_TYPES = ((dict, "object"), (list, "array"), (str, "string"), (bool, "boolean"), ((int, float), "number"))



def _article(noun: str) -> str:
    return "an" if noun[:1].lower() in "aeiou" else "a"

def _os_reason(error: OSError) -> str:
    return error.strerror or type(error).__name__


def regular_file_size(path: str | Path, what: str = "file") -> int:
    """The size of ``path`` if it is a regular file (links followed), else one line saying what it is."""
    try:
        mode_size = os.stat(path)
    except FileNotFoundError:
        raise MMAdapterError(f"{path}: no such {what}") from None
    except OSError as error:
        raise MMAdapterError(f"{path}: cannot read {what} ({_os_reason(error)})") from None
    _require_regular(path, mode_size.st_mode, what)
    return mode_size.st_size


def _require_regular(path: str | Path, mode: int, what: str) -> None:
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
        raise MMAdapterError(f"{path}: is {kind}, expected {_article(what)} {what} (a regular file)")


def read_bytes(path: str | Path, what: str = "file", max_bytes: int = MAX_TEXT_BYTES) -> bytes:
    """All bytes of a regular file of at most ``max_bytes``; anything else is one line naming the file."""
    size = regular_file_size(path, what)
    if size > max_bytes:
        raise MMAdapterError(f"{path}: {what} is {size:,} bytes, more than the {max_bytes:,} {_article(what)} {what} may have")
    try:
        # O_NONBLOCK: should the path become a FIFO after the stat above, opening it still cannot block
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(descriptor, "rb") as handle:
            _require_regular(path, os.fstat(handle.fileno()).st_mode, what)
            data = handle.read(max_bytes + 1)
    except OSError as error:
        raise MMAdapterError(f"{path}: cannot read {what} ({_os_reason(error)})") from None
    if len(data) > max_bytes:
        raise MMAdapterError(f"{path}: {what} grew past {max_bytes:,} bytes while being read")
    return data


def read_text(path: str | Path, what: str = "text file", max_bytes: int = MAX_TEXT_BYTES) -> str:
    """A regular file's text as UTF-8 (a leading byte-order mark is dropped); one line for any failure."""
    data = read_bytes(path, what, max_bytes)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise MMAdapterError(f"{path}: {what} is not UTF-8 text (byte 0x{data[error.start]:02x} at line {line}, "
                             f"byte offset {error.start})") from None


def json_type(value: Any) -> str:
    """JSON's name for the type of a parsed value ("object", "array", ...)."""
    if value is None:
        return "null"
    return next(name for types, name in _JSON_TYPES if isinstance(value, types))


class _NotJSON(ValueError):
    """What standard JSON (RFC 8259) has no place for, found while parsing."""


def _no_constant(name: str) -> float:
    raise _NotJSON(f"{name} is not a JSON number (NaN and Infinity are not standard JSON)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotJSON(f"the number {text[:40]} is out of range of a double")
    return value


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")  # a \uD800-\uDFFF escape: maybe a lone surrogate


def _lone_surrogate(value: Any) -> str | None:
    """The first string (or key) of a parsed document holding a lone surrogate, which no UTF-8 file can carry and
    a tokenizer fails on; walked without recursion (the document may be deep)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack += [*item.keys(), *item.values()]
        elif isinstance(item, list):
            stack += item
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return item
    return None


def loads_json(text: str | bytes) -> Any:
    """``json.loads`` of standard JSON only: NaN/Infinity literals, numbers out of a double's range and escaped
    lone surrogates are refused (:class:`ValueError`), and a document nested too deeply raises
    :class:`RecursionError` as a ValueError too. Every reader of JSON in the project parses through here (or
    :func:`parse_json`) so each file of each command gets the same checks."""
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError:
        raise _NotJSON("nested too deeply to read") from None
    if _SURROGATE_ESCAPE.search(text if isinstance(text, str) else text.decode("utf-8", "replace")):
        found = _lone_surrogate(value)
        if found is not None:
            shown = found.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")[:40]
            raise _NotJSON(f"the string {shown!r} holds a lone surrogate escape, which is not text")
    return value


def json_problem(error: ValueError) -> str:
    """The reason of a :func:`loads_json` failure in a few words (with line and column for a syntax error)."""
    if isinstance(error, json.JSONDecodeError):
        return f"{error.msg} at line {error.lineno}, column {error.colno}"
    return " ".join(str(error).split())[:200]


def parse_json(text: str, where: str | Path, what: str = "JSON", expect: type | None = None) -> Any:
    """``text`` parsed as JSON, of type ``expect`` (dict or list) when given; one line naming ``where`` if not."""
    try:
        value = loads_json(text)
    except ValueError as error:  # a syntax error, NaN, a lone surrogate, too deep, an integer of too many digits
        raise MMAdapterError(f"{where}: {what} is not valid JSON ({json_problem(error)})") from None
    if expect is not None and not isinstance(value, expect):
        raise MMAdapterError(f"{where}: {what} must be a JSON {json_type(expect())}, found a JSON {json_type(value)}")
    return value


def read_json(path: str | Path, what: str = "JSON file", expect: type | None = None,
              max_bytes: int = MAX_TEXT_BYTES) -> Any:
    """A regular UTF-8 JSON file, of type ``expect`` when given; every failure is one line naming the file."""
    return parse_json(read_text(path, what, max_bytes), path, what, expect)


class Rule(NamedTuple):
    """What a JSON field must hold: a test and its wording for the refusal."""

    test: Callable[[Any], bool]
    wanted: str


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


POSITIVE_INT = Rule(lambda v: _is_int(v) and v >= 1, "a positive integer")
POSITIVE_NUMBER = Rule(lambda v: (_is_int(v) or isinstance(v, float)) and math.isfinite(v) and v > 0,
                       "a positive number")
STRING = Rule(lambda v: isinstance(v, str), "a string")
BOOLEAN = Rule(lambda v: isinstance(v, bool), "true or false")


def check_fields(data: dict, where: str | Path, what: str, required: dict[str, Rule],
                 optional: dict[str, Rule] | None = None, allow_unknown: bool = True) -> None:
    """Refuse, in one line naming ``where`` and the field, a missing required field, a field of the wrong
    type (optional ones may also be null) and, unless ``allow_unknown``, a field not listed."""
    optional = optional or {}
    missing = [name for name in required if name not in data]
    if missing:
        raise MMAdapterError(f"{where}: {what} is missing required field(s) {', '.join(missing)}")
    if not allow_unknown:
        unknown = sorted(set(data) - set(required) - set(optional))
        if unknown:
            raise MMAdapterError(f"{where}: {what} has unknown field(s) {', '.join(unknown)}")
    for name, rule in {**required, **optional}.items():
        value = data.get(name)
        if name in data and not rule.test(value) and not (value is None and name in optional):
            shown = json.dumps(value)
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise MMAdapterError(f"{where}: {what} field {name!r} must be {rule.wanted}, found {shown}")
