"""Field helpers for the config dataclasses: range checks that name the field, and command-line hints.

Every config checks its own values in ``__post_init__`` with :func:`check`, so a bad value is
refused when the config is built (by the command line before any work, or by library code),
as one :class:`ConfigError` that names the field; the command line shows it under the flag's
name (``--batch-size``). Hints for the command line (choices, an alias, a positional argument)
live in the field's metadata, where the ``simple_parsing`` flag generator reads them; the
dataclasses themselves import nothing of it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from mm_adapter.errors import ConfigError, MMAdapterError


def check_type(config: Any, field: str, kind: type | tuple[type, ...], optional: bool = False) -> None:
    """Refuse ``config.field`` that is not of ``kind`` (a bool is not an int here); ``None`` passes when ``optional``.
    Configs read from files (adapter metadata, recipes) would otherwise carry a wrong type deep into the code."""
    value = getattr(config, field)
    if value is None and optional:
        return
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise ConfigError(field, f"must be {names}, got {value!r}")


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def check(config: Any, field: str, *, low: float | None = None, high: float | None = None,
          low_open: bool = False, integer: bool = False, optional: bool = False,
          choices: Sequence[Any] | None = None) -> None:
    """Refuse ``config.field`` outside [low, high] (``low_open``: strictly above low), not a finite
    number, not an int when ``integer``, or not one of ``choices``; ``None`` passes when ``optional``."""
    value = getattr(config, field)
    if value is None and optional:
        return
    if choices is not None:
        if value not in choices:
            raise ConfigError(field, f"must be one of {', '.join(map(str, choices))}, got {value!r}")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise ConfigError(field, f"must be {'an integer' if integer else 'a number'}, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(field, f"must be finite, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise ConfigError(field, f"must be {'>' if low_open else '>='} {_number(low)}, got {value!r}")
    if high is not None and value > high:
        raise ConfigError(field, f"must be <= {_number(high)}, got {value!r}")


def check_positive(config: Any, *fields: str) -> None:
    """Refuse any of ``fields`` that is not a whole number >= 1 (``None`` passes: "not set")."""
    for field in fields:
        check(config, field, low=1, integer=True, optional=True)


def _number(bound: float) -> str:
    """A bound as people write it: 1048576, not 1.04858e+06; 0.5 as 0.5."""
    return str(int(bound)) if float(bound).is_integer() and abs(bound) < 1e15 else f"{bound:g}"


def option(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING,
           choices: Sequence[Any] | None = None, alias: str | None = None, positional: bool = False,
           nargs: str | None = None, metavar: str | None = None, type: Any = None) -> Any:
    """``dataclasses.field`` with command-line hints; help text stays in the field's docstring."""
    custom: dict[str, Any] = {}
    if choices is not None:
        custom["choices"] = list(choices)
    if nargs is not None:
        custom["nargs"] = nargs
    if metavar is not None:
        custom["metavar"] = metavar
    if type is not None:
        custom["type"] = type
    metadata: dict[str, Any] = {"positional": positional}
    if alias:
        metadata["alias"] = [alias]
    if custom:
        metadata["custom_args"] = custom
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def config_from_dict(cls, data: Any, source: str, what: str, renamed: dict[str, str] | None = None):
    """Build ``cls`` from a JSON object, refusing a non-object and unknown fields in one line."""
    if not isinstance(data, dict):
        raise MMAdapterError(f"{source}: {what} is not a JSON object (got {type(data).__name__})")
    data = {(renamed or {}).get(key, key): value for key, value in data.items()}
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise MMAdapterError(f"{source}: unknown {what} field(s) {', '.join(unknown)}")
    try:
        return cls(**data)
    except ConfigError as error:
        raise MMAdapterError(f"{source}: {what} {error}") from None
