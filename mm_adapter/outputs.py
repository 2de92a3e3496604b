"""A job's output folder and the resolved config it writes there (torch-free).

A job's output folder is created when the job starts writing and removed again if the job fails
before anything was written into it, so a refused run leaves no new folder behind. The config
the job ran with is written into the folder as ``config.yaml`` (with the command that ran it);
``mm-adapter <command> --config that/config.yaml`` reproduces the run.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .atomic import atomic_write_text
from .errors import MMAdapterError

CONFIG_NAME = "config.yaml"


def _missing_parents(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    for path in (folder, *folder.parents):
        if path.exists():
            break
        missing.append(path)
    return missing


@contextmanager
def output_folder(folder: str | Path) -> Iterator[Path]:
    """Create ``folder`` (and parents) for the enclosed work; if that work fails before writing anything
    into it, remove what was created, so a refused run leaves no new empty folder behind."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise MMAdapterError(f"{folder}: output path exists and is not a folder")
    created = _missing_parents(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    except BaseException:
        for path in created:  # deepest first; stops at the first one something was written into
            try:
                path.rmdir()
            except OSError:
                break
        raise


def config_dict(config: Any) -> dict[str, Any]:
    """A job config as plain YAML-able data (tuples become lists)."""

    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        return value

    return plain(dataclasses.asdict(config))


def write_config(folder: str | Path, command: str, config: Any) -> Path:
    """``folder/config.yaml``: the command and every setting it ran with (``--config`` reads it back)."""
    import yaml

    text = f"# mm-adapter {command} --config {Path(folder) / CONFIG_NAME} reproduces this run\n"
    text += yaml.safe_dump({"command": command, **config_dict(config)}, sort_keys=False)
    return atomic_write_text(Path(folder) / CONFIG_NAME, text)
