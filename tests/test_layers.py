"""The library / application line, read from every module's imports (no module is executed).

Layers, lowest first: the model side (mm_adapter's own modules), the benchmark side
(mm_adapter.scienceqa, repository folder scienceqa/), where they meet (mm_adapter.eval, folder
eval/), the demo, the jobs, the command line. A module may import its own layer and lower ones,
never a higher one; nothing in the packages imports scripts/, bench/ or tests/.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"mm_adapter": "mm_adapter", "scienceqa": "mm_adapter.scienceqa", "eval": "mm_adapter.eval"}
LAYERS = ["core", "scienceqa", "eval", "demo", "jobs", "cli"]
SUBPACKAGE_LAYER = {"scienceqa": "scienceqa", "eval": "eval", "demo": "demo", "jobs": "jobs", "cli": "cli",
                    "recipes": "core"}
# Lower-layer utilities the benchmark side may use although it sits beside, not above, the model side.
SCIENCEQA_MAY_USE = {"mm_adapter.atomic"}  # torch-free file writing


def module_name(path: Path) -> str:
    folder, *rest = path.relative_to(REPO).with_suffix("").parts
    parts = [FOLDERS[folder], *rest]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "mm_adapter":
        return None
    if parts[:2] == ["mm_adapter", "__main__"]:
        return "cli"  # `python -m mm_adapter` is the command
    if len(parts) == 1:
        return "core"
    return SUBPACKAGE_LAYER.get(parts[1], "core")


def _program_blocks(tree: ast.Module) -> set[int]:
    """ids of nodes under ``if __name__ == "__main__":``: an older command spelling kept as a program
    (``python -m eval.table``), which runs only as a program, never when the module is imported."""
    inside = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
            inside |= {id(child) for child in ast.walk(node)}
    return inside


def imports(path: Path, name: str) -> list[str]:
    """Absolute names of every module ``path`` imports when imported (relative imports resolved)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    program = _program_blocks(tree)
    found = []
    for node in ast.walk(tree):
        if id(node) in program:
            continue
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            found += [base] + [f"{base}.{alias.name}" for alias in node.names]
    return found


MODULES = sorted((p, module_name(p)) for folder in FOLDERS for p in (REPO / folder).rglob("*.py"))


def test_the_scan_sees_every_layer():
    """The rules below would pass vacuously if module names were mapped wrongly."""
    assert {layer(name) for _, name in MODULES} == set(LAYERS)


@pytest.mark.parametrize("path, name", MODULES, ids=[name for _, name in MODULES])
def test_no_module_imports_a_higher_layer(path, name):
    """The model side knows nothing of ScienceQA, the library nothing of the jobs or the command line."""
    mine = LAYERS.index(layer(name))
    for target in imports(path, name):
        top = target.split(".")[0]
        assert top not in ("scripts", "bench", "tests", "eval", "scienceqa"), f"{name} imports {target}"
        theirs = layer(target)
        if theirs is None or any(target == m or target.startswith(m + ".") for m in SCIENCEQA_MAY_USE):
            continue
        assert LAYERS.index(theirs) <= mine, f"{name} ({layer(name)}) imports {target} ({theirs})"
        if layer(name) == "scienceqa":
            assert theirs == "scienceqa", f"the benchmark side imports the model side: {name} -> {target}"
