"""One file, one import name: the repository's eval/ and scienceqa/ folders are the packages mm_adapter.eval and
mm_adapter.scienceqa however the project is run (installed: test_packaging; editable, as these tests run; from a
plain checkout; from the repository root), and never a second, top-level ``eval`` or ``scienceqa``."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_layers import MODULES  # every library file with its one module name

REPO = Path(__file__).resolve().parents[1]
OURS = ("mm_adapter", "eval", "scienceqa", "tests", "bench")  # the suite's own modules count too
TOP_LEVEL = ("eval", "eval.config", "eval.table", "scienceqa", "scienceqa.data", "scienceqa.synthetic")


def _run(code: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=environment,
                          timeout=120)


@pytest.mark.parametrize("name", TOP_LEVEL)
def test_the_folders_refuse_a_second_name_from_the_repository_root(name):
    """From the repository root the folders are on sys.path as ``eval`` and ``scienceqa``; importing them so is
    refused in one line that names the one name, so no second copy of a class (``EvalConfig is EvalConfig``)
    can exist."""
    done = _run(f"import {name}", REPO)
    assert done.returncode == 1, done.stdout
    last = done.stderr.strip().splitlines()[-1]
    package = name.split(".")[0]
    assert last.startswith("ImportError") and f"import it under that name" in last, last
    assert f"mm_adapter.{package}" in last, last


def test_a_plain_checkout_imports_from_any_folder(tmp_path):
    """No install: with the checkout on PYTHONPATH, ``mm_adapter.eval`` and ``mm_adapter.scienceqa`` import from
    another folder, from the checkout's own files (the links inside mm_adapter/ travel with a clone)."""
    checkout = tmp_path / "checkout"
    for folder in ("mm_adapter", "eval", "scienceqa"):
        shutil.copytree(REPO / folder, checkout / folder, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = ("import mm_adapter.eval.config as c, mm_adapter.scienceqa.data as d, mm_adapter.eval.table as t; "
            "print(c.__file__); print(d.__file__); print(t.__file__)")
    done = _run(code, elsewhere, PYTHONPATH=str(checkout))
    assert done.returncode == 0, done.stderr[-2000:]
    for line in done.stdout.split():
        assert line.startswith(str(checkout / "mm_adapter")), line


def test_every_library_file_has_one_module_in_this_process():
    """Every module imports under its one name, and no two loaded modules are the same file (what a second name
    would make: two ``EvalConfig`` classes, two error roots). The suite's own modules count too: pytest has
    imported every test file by the time this runs, so a helper imported as both ``tiny`` and ``tests.tiny``
    fails here."""
    names = [name for _, name in MODULES if not name.endswith(".__main__")]
    assert {"mm_adapter.eval.run", "mm_adapter.scienceqa.metrics", "mm_adapter.model.adapter"} <= set(names)
    for name in names:
        importlib.import_module(name)
    by_file: dict[Path, list[str]] = {}
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        path = Path(file).resolve() if file else None
        if path and REPO in path.parents and path.relative_to(REPO).parts[0] in OURS:
            by_file.setdefault(path, []).append(name)
    assert {file: seen for file, seen in by_file.items() if len(seen) > 1} == {}
    assert not any(name.split(".")[0] in ("eval", "scienceqa") for seen in by_file.values() for name in seen)


def test_the_command_runs_as_a_module_from_any_folder(tmp_path):
    """``python -m mm_adapter`` is the ``mm-adapter`` command from any working folder."""
    done = subprocess.run([sys.executable, "-m", "mm_adapter", "--help"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert done.returncode == 0 and "usage: mm-adapter" in done.stdout and "data synthetic-images" in done.stdout
