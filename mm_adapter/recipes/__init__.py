"""Recipe files: named settings for a command, loaded with ``--config NAME`` (flags override them).

``<command>-<name>.yaml`` holds the settings of ``mm-adapter train <command>``, nested as in the
job's config dataclass (``train: {epochs: 1}``); any config.yaml a run wrote is a recipe too.
"""

from __future__ import annotations

import re
from pathlib import Path

from mm_adapter.errors import MMAdapterError

FOLDER = Path(__file__).resolve().parent
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")  # a recipe name is one file name in FOLDER, never a path


def recipe_file(name: str, prefix: str | None) -> Path | None:
    """The recipe file called ``name`` for a command with recipes ``prefix``, or None. A name that is not a recipe
    name (a path separator, "..", a leading dot) is one line: it must never reach a file outside this folder."""
    if prefix is None:
        return None
    if not NAME.match(name) or ".." in name:
        raise MMAdapterError(f"{name[:80]!r}: no such file, and not a recipe name (letters, digits, '_', '.', '-')")
    for candidate in (f"{prefix}-{name}.yaml", f"{name}.yaml"):
        path = FOLDER / candidate
        if path.is_file() and path.name.startswith(f"{prefix}-") and path.resolve().parent == FOLDER:
            return path
    return None


def recipe_names(prefix: str) -> list[str]:
    return sorted(p.stem[len(prefix) + 1:] for p in FOLDER.glob(f"{prefix}-*.yaml"))
