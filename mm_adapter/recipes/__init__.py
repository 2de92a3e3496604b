"""Recipe files: named settings for a command, loaded with ``--config NAME`` (flags override them).

``<command>-<name>.yaml`` holds the settings of ``mm-adapter train <command>``, nested as in the
job's config dataclass (``train: {epochs: 1}``); any config.yaml a run wrote is a recipe too.
"""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).resolve().parent


def recipe_file(name: str, prefix: str | None) -> Path | None:
    """The recipe file called ``name`` for a command with recipes ``prefix``, or None."""
    if prefix is None:
        return None
    for candidate in (f"{prefix}-{name}.yaml", f"{name}.yaml"):
        path = FOLDER / candidate
        if path.is_file() and path.name.startswith(f"{prefix}-"):
            return path
    return None


def recipe_names(prefix: str) -> list[str]:
    return sorted(p.stem[len(prefix) + 1:] for p in FOLDER.glob(f"{prefix}-*.yaml"))
