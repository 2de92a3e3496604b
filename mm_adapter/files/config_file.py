"""Config files (``--config FILE``, ``plan RECIPE``): a recipe or a written config.yaml, read as data that is
bounded, safe and type-checked.

A config file comes from anywhere (a colleague, a paper's repository), and its values reach the flag parser,
which formats every default while building itself: checks must come before it. So the file is

* bounded: at most ``MAX_CONFIG_BYTES`` (recipes are a few hundred bytes), a regular file (never a FIFO);
* safe and small in memory: YAML anchors and aliases are refused (``&a [*a, *a, ...]`` expands a small file
  into unbounded memory), tags other than the standard ones are refused by the safe loader, and libyaml's C
  parser is used where installed (the pure-Python one is slow on large files);
* typed by its fields: every value is checked against the dataclass field it sets, with the setting named
  (``train.epochs: expected an integer, got a string '5'``). YAML's implicit types are not coerced: a date or a
  number where a string is meant (``revision: 2024-01-01``) is refused with a hint to quote it, a float NaN or
  infinity is refused, a bool is not a number.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any

from mm_adapter.errors import MMAdapterError
from mm_adapter.files.text import json_problem, loads_json, read_text

MAX_CONFIG_BYTES = 1 << 20
MAX_ITEMS = 4096  # entries of one list setting (layer lists, gradient-checkpointed blocks...)
MAX_TEXT = 4096  # characters of one string setting (paths, names, prompts)


class ConfigFileError(MMAdapterError):
    """A config file that cannot be used: printed as one line naming the file and the setting, exit 2."""


def _loader():
    import yaml

    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _refuse_aliases(text: str, source: str) -> None:
    """Walk the YAML events (no object is built) and refuse any anchor or alias, with its line."""
    import yaml

    for event in yaml.parse(text, Loader=_loader()):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            line = event.start_mark.line + 1 if event.start_mark else "?"
            raise ConfigFileError(f"{source}: YAML anchors and aliases are not allowed in a config file (line "
                                  f"{line}); write each value out")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A recipe or a written config.yaml (``.json``: JSON): a mapping of settings; anything else is one line."""
    import yaml

    source = str(path)
    try:
        text = read_text(path, "config file", MAX_CONFIG_BYTES)
    except MMAdapterError as error:
        raise ConfigFileError(str(error)) from None
    if Path(path).suffix == ".json":
        try:
            data = loads_json(text)
        except ValueError as error:
            raise ConfigFileError(f"{source}: not a valid JSON file ({json_problem(error)})") from None
    else:
        try:
            _refuse_aliases(text, source)
            data = yaml.load(text, Loader=_loader())  # noqa: S506 - a safe loader
        except yaml.YAMLError as error:
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise ConfigFileError(f"{source}: not a valid YAML file ({first})") from None
        except RecursionError:
            raise ConfigFileError(f"{source}: not a valid YAML file (nested too deeply to read)") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigFileError(f"{source}: a config file must hold a mapping of settings, got {_kind(data)}")
    return data


def _kind(value: Any) -> str:
    """How a refusal names a value of the wrong type: its YAML kind and (short) text."""
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
             dict: "a mapping", type(None): "null"}
    name = next((text for kind, text in names.items() if type(value) is kind), None)
    if name is None:
        name = "a date" if type(value).__name__ in ("date", "datetime") else f"a {type(value).__name__}"
    if isinstance(value, (dict, list)) or value is None:
        return name
    shown = repr(value) if not hasattr(value, "isoformat") else value.isoformat()
    return f"{name} {shown[:40] + '...' if len(shown) > 40 else shown}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _problem(hint: Any, value: Any) -> str | None:
    """Why ``value`` cannot set a field of type ``hint`` (None when it can)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        problems = [_problem(arg, value) for arg in args if arg is not type(None)]
        return None if None in problems else " or ".join(problem.split(", got ")[0] for problem in problems) + \
            f", got {_kind(value)}"
    if hint is bool:
        return None if isinstance(value, bool) else f"expected true or false, got {_kind(value)}"
    if hint is int:
        return None if _is_int(value) else f"expected an integer, got {_kind(value)}"
    if hint is float:
        return None if _is_number(value) else f"expected a finite number, got {_kind(value)}"
    if hint is str:
        if not isinstance(value, str):
            quote = " (quote it to mean text)" if isinstance(value, (int, float)) or hasattr(value, "isoformat") \
                else ""
            return f"expected a string, got {_kind(value)}{quote}"
        if len(value) > MAX_TEXT:
            return f"expected a string of at most {MAX_TEXT} characters, got {len(value):,}"
        if "\0" in value:
            return "expected text, got a NUL character"
        return None
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return f"expected a list, got {_kind(value)}"
        if len(value) > MAX_ITEMS:
            return f"expected a list of at most {MAX_ITEMS} items, got {len(value):,}"
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                return f"expected a list of {len(args)} items, got {len(value)}"
            item_hints = list(args)
        else:
            item_hints = [args[0] if args else Any] * len(value)
        for index, (item_hint, item) in enumerate(zip(item_hints, value)):
            problem = None if item_hint is Any else _problem(item_hint, item)
            if problem:
                return f"item {index}: {problem}"
        return None
    return None  # a type this reader does not know: the dataclass checks it


def check_settings(cls: type, data: dict[str, Any], source: str, prefix: str = "") -> None:
    """Every key of ``data`` is a field of ``cls`` (recursively for nested configs) and every value fits its
    field's type and choices; the first one that does not is one line naming the file and the setting."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in data.items():
        if key not in fields:
            raise ConfigFileError(f"{source}: unknown setting {prefix}{key!s} (known: {', '.join(sorted(fields))})")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigFileError(f"{source}: {prefix}{key} must be a mapping of {hint.__name__} settings, got "
                                      f"{_kind(value)}")
            check_settings(hint, value, source, f"{prefix}{key}.")
            continue
        problem = _problem(hint, value)
        choices = fields[key].metadata.get("custom_args", {}).get("choices")
        items = value if isinstance(value, (list, tuple)) else [] if value is None else [value]  # nargs: each item
        wrong = next((item for item in items if item not in choices), None) if choices is not None else None
        if problem is None and wrong is not None:
            problem = f"expected one of {', '.join(map(str, choices))}, got {_kind(wrong)}"
        if problem:
            raise ConfigFileError(f"{source}: setting {prefix}{key}: {problem}")
