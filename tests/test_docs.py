"""The README's and docs/' code blocks name things that exist: every Python block compiles and its imports
import; every ``mm-adapter`` command line in a shell block is a command whose flags parse to its config (nothing
runs: the commands train for minutes to hours); every ``python -m bench.X`` names a benchmark module and every
``bash scripts/X`` a script. A regroup, a renamed flag or a removed entry point fails here."""

from __future__ import annotations

import ast
import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from mm_adapter.cli.commands import find
from mm_adapter.cli.parse import parse

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
OPERATORS = {"&&", "||", ";", "|", "&", ">", ">>", "2>", "do", "done", "then"}


def blocks(language: str) -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for match in BLOCK.finditer(page.read_text()):
            if match.group(1) == language:
                line = page.read_text()[: match.start()].count("\n") + 1
                found.append((f"{page.relative_to(REPO)}:{line}", match.group(2)))
    return found


def commands(text: str) -> list[list[str]]:
    """The command lines of a shell block: continuations joined, comments dropped, split at shell operators."""
    words = [word for line in text.replace("\\\n", " ").splitlines() for word in [*shlex.split(line, comments=True), ";"]]
    runs, current = [], []
    for word in words:
        if word in OPERATORS or word.endswith(";"):
            word = word.removesuffix(";")
            if word and word not in OPERATORS:
                current.append(word)
            if current:
                runs.append(current)
            current = []
        else:
            current.append(word)
    return runs


PYTHON = blocks("python")
SHELL = [(where, run) for where, text in blocks("bash") for run in commands(text)]
MM_ADAPTER = [(where, run) for where, run in SHELL if Path(run[0]).name == "mm-adapter"]


def test_the_pages_have_blocks_to_check():
    """The checks below would pass vacuously if the blocks were not found."""
    assert len(PYTHON) >= 3 and len(MM_ADAPTER) >= 20


@pytest.mark.parametrize("where, code", PYTHON, ids=[where for where, _ in PYTHON])
def test_python_blocks_compile_and_import(where, code):
    tree = ast.parse(code, where)
    imports = ast.Module([node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))], [])
    exec(compile(imports, where, "exec"), {})


@pytest.mark.parametrize("where, argv", MM_ADAPTER, ids=[f"{w} {' '.join(a[1:3])}" for w, a in MM_ADAPTER])
def test_command_lines_parse(where, argv):
    """A documented command exists and its flags parse (a value the shell fills in, ``$x``, is not checked)."""
    command, rest, _ = find(argv[1:])
    assert command is not None, f"{where}: no command {' '.join(argv[1:3])!r}"
    if any("$" in word for word in rest):
        return
    parse(command, rest)


def test_modules_and_scripts_named_in_shell_blocks_exist():
    for where, run in SHELL:
        if run[0].endswith("python") and run[1:2] == ["-m"]:
            assert importlib.util.find_spec(run[2]) is not None, f"{where}: no module {run[2]}"
            assert run[2].split(".")[0] in ("bench", "mm_adapter"), f"{where}: {run[2]} is not a way in"
        if run[0] == "bash":
            assert (REPO / run[1]).is_file(), f"{where}: no script {run[1]}"
