"""Every ``MM_ADAPTER_*`` environment setting checked when a command starts, not when first used.

A setting read only deep inside a job (the progress style, at the first bar) would fail after the job had
created its output folder and spent minutes loading a model; here each is checked before parsing the flags, in
one line naming the variable.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable, Mapping

from mm_adapter.errors import MMAdapterError

_SWITCH = ("", "0", "1")


def _progress(value: str) -> str | None:
    from mm_adapter.files.progress import MODES

    return None if value.strip().lower() in ("", *MODES) else f"expected one of {', '.join(MODES)}"


def _switch(value: str) -> str | None:
    return None if value in _SWITCH else "expected 1 (on), 0 or empty (off)"


def _cache(value: str) -> str | None:
    if not value.strip():
        return "expected a folder path, got an empty value"
    if "\0" in value:
        return "expected a folder path, got a NUL character"
    return f"{value} exists and is not a folder" if os.path.exists(value) and not os.path.isdir(value) else None


def _kill_at_step(value: str) -> str | None:
    at, _, name = value.partition(":")
    if value == "":
        return None
    if not re.fullmatch(r"[0-9]{1,9}", at):
        return "expected STEP or STEP:SIGNAL (a step number, e.g. 5:SIGTERM)"
    if name and not (name.startswith("SIG") and isinstance(getattr(signal, name, None), signal.Signals)):
        return f"unknown signal {name!r} (e.g. SIGTERM, SIGINT, SIGKILL)"
    return None


CHECKS: dict[str, Callable[[str], str | None]] = {
    "MM_ADAPTER_PROGRESS": _progress,
    "MM_ADAPTER_DEBUG": _switch,
    "MM_ADAPTER_ALLOW_DOWNLOAD": _switch,
    "MM_ADAPTER_CACHE": _cache,
    "MM_ADAPTER_KILL_AT_STEP": _kill_at_step,
}


def check_environment(environ: Mapping[str, str] | None = None) -> None:
    """Refuse, in one line naming the variable, any malformed ``MM_ADAPTER_*`` setting."""
    environ = os.environ if environ is None else environ
    for name, check in CHECKS.items():
        if name not in environ:
            continue
        problem = check(environ[name])
        if problem:
            shown = environ[name] if len(environ[name]) <= 60 else environ[name][:57] + "..."
            raise MMAdapterError(f"environment variable {name}={shown!r}: {problem}")
