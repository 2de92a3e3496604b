"""Recipe files: named settings for a command, loaded with ``--config NAME`` (flags override them).

``<task>-<name>.yaml`` holds the settings of ``mm-adapter train <task>``, nested as in the job's config
dataclass (``train: {epochs: 1}``); any config.yaml a run wrote is a recipe too.

One naming scheme everywhere: a recipe is called by its file name without ``.yaml`` (``alpaca-llama7b``,
``scienceqa-smollm2-cpu``), in ``plan`` as in ``--config``. Older spellings keep working as aliases: the
name without the task word under a command of that task (``--config llama7b`` of ``train alpaca``) and the
task word elsewhere in the name (``plan llama7b-alpaca``). A name that is none of them is refused with the
valid names listed.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from pathlib import Path

from mm_adapter.errors import MMAdapterError

FOLDER = Path(__file__).resolve().parent
TASKS = ("alpaca", "scienceqa")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")  # a recipe name is one file name in FOLDER, never a path


def _spellings(name: str, prefix: str) -> list[str]:
    """The short names ``name`` may mean under ``prefix``: itself, and itself without the task word anywhere
    (``alpaca-llama7b``, ``llama7b-alpaca`` -> ``llama7b``; ``llama7b-scienceqa-vitl14`` -> ``llama7b-vitl14``)."""
    stem = name.removesuffix(".yaml")
    words = stem.split("-")
    rest = "-".join(word for word in words if word != prefix)
    return [stem] + ([rest] if prefix in words and rest else [])


def recipe_file(name: str, prefix: str | None) -> Path | None:
    """The shipped recipe of task ``prefix`` that ``name`` means (any accepted spelling), or None. A name that is not
    a recipe name (a path separator, "..", a leading dot) is one line: it must never reach a file outside FOLDER."""
    if prefix is None:
        return None
    if not NAME.match(name) or ".." in name:
        raise MMAdapterError(f"{name[:80]!r}: no such file, and not a recipe name (letters, digits, '_', '.', '-')")
    for spelling in _spellings(name, prefix):
        path = FOLDER / f"{prefix}-{spelling}.yaml"
        if path.is_file() and path.resolve().parent == FOLDER:
            return path
    return None


def recipe_names(prefix: str) -> list[str]:
    """The full names (``alpaca-llama7b``) of the recipes of task ``prefix``."""
    return sorted(p.stem for p in FOLDER.glob(f"{prefix}-*.yaml"))


def find_recipe(name: str, prefixes: Sequence[str] = TASKS) -> Path:
    """The recipe file ``name`` means among the tasks ``prefixes``; a miss is one line listing the valid names
    (and the nearest one)."""
    found = {path for prefix in prefixes if (path := recipe_file(name, prefix)) is not None}
    if len(found) == 1:
        return found.pop()
    if found:
        raise MMAdapterError(f"recipe {name!r} is ambiguous: {', '.join(sorted(p.stem for p in found))}; "
                             "give the full name")
    known = [full for prefix in prefixes for full in recipe_names(prefix)]
    near = difflib.get_close_matches(name.removesuffix(".yaml"), known, n=1, cutoff=0.5)
    hint = f"did you mean {near[0]}? " if near else ""
    raise MMAdapterError(f"recipe {name!r}: no such file or recipe ({hint}recipes: {', '.join(known)})")
