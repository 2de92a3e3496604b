"""The house's floors, read from every module's imports (no module is executed).

Each folder of the library is one layer; a module may import its own layer and lower ones, never a higher
one, so data flows one way: files -> model -> encoders -> training -> methods -> adapter folders ->
inference and data -> evaluation -> demo -> jobs -> command line. The benchmark side (``scienceqa/``, the
package ``mm_adapter.scienceqa``) sits beside the model at the bottom and knows nothing of adapters. Every
import counts: top-level, inside a function (lazy) and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"mm_adapter": "mm_adapter", "scienceqa": "mm_adapter.scienceqa", "eval": "mm_adapter.eval"}
# Lowest first. A name is a module or folder right under mm_adapter.
LAYERS = ["errors", "fields", "files", "recipes", "scienceqa", "model", "encoders", "training", "methods",
          "pretrained", "data", "inference", "interop", "eval", "demo", "jobs", "cli"]
APPLICATION = ("demo", "jobs", "cli")  # the library below them never imports these
FACE = "mm_adapter"  # the package's own __init__: the public names, imported lazily from every layer


def module_name(path: Path) -> str:
    folder, *rest = path.relative_to(REPO).with_suffix("").parts
    parts = [FOLDERS[folder], *rest]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> str | None:
    """The layer of a module of ours (None for a module that is not ours; ``FACE`` for the package itself)."""
    parts = module.split(".")
    if parts[0] != "mm_adapter":
        return None
    if len(parts) == 1:
        return FACE
    if parts[1] == "__main__":
        return "cli"  # `python -m mm_adapter` is the command
    assert parts[1] in LAYERS, f"{module}: in no layer; add its folder to LAYERS"
    return parts[1]


def _library_files() -> list[Path]:
    """Every source file once: mm_adapter/eval and mm_adapter/scienceqa are links to the top-level folders."""
    files = [p for p in (REPO / "mm_adapter").rglob("*.py")
             if p.relative_to(REPO).parts[1] not in ("eval", "scienceqa")]
    return sorted([*files, *(REPO / "eval").rglob("*.py"), *(REPO / "scienceqa").rglob("*.py")])


MODULES = [(p, module_name(p)) for p in _library_files()]
NAMES = {name for _, name in MODULES}


def imports(path: Path, name: str) -> list[str]:
    """Absolute names of every module ``path`` imports anywhere in its text (relative imports resolved); for
    ``from package import name`` where ``package.name`` is a module of ours, that module."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            found += [f"{base}.{alias.name}" if f"{base}.{alias.name}" in NAMES else base for alias in node.names]
    return found


GRAPH = {name: {t for t in imports(path, name) if t in NAMES and t != name} for path, name in MODULES}


def test_the_scan_sees_every_layer():
    """The rules below would pass vacuously if module names were mapped wrongly."""
    assert {layer(name) for name in NAMES} == {*LAYERS, FACE}
    assert len(MODULES) == len(NAMES) > 80


@pytest.mark.parametrize("path, name", MODULES, ids=[name for _, name in MODULES])
def test_no_module_imports_a_higher_layer(path, name):
    """Lower layers never import higher ones: the model knows nothing of folders, the hub, training or ScienceQA's
    evaluation, the library nothing of the jobs or the command line."""
    mine = layer(name)
    for target in imports(path, name):
        top = target.split(".")[0]
        assert top not in ("scripts", "bench", "tests", "eval", "scienceqa"), f"{name} imports {target}"
        theirs = layer(target)
        if theirs is None or mine == FACE:
            continue
        assert theirs != FACE, f"{name} imports the package face for {target}: import the module that defines it"
        assert LAYERS.index(theirs) <= LAYERS.index(mine), f"{name} ({mine}) imports {target} ({theirs})"


def _reaches(source_layers: tuple[str, ...], target_layers: tuple[str, ...]) -> list[str]:
    return [f"{name} -> {target}" for name, targets in GRAPH.items() if layer(name) in source_layers
            for target in targets if layer(target) in target_layers]


def test_the_model_layer_never_imports_the_folder_and_hub_layer():
    """model/ is below adapter folders and the hub: ``model.save_pretrained``'s folder writer is installed from
    above (``pretrained`` calls ``install_folder_saver``), not imported from below."""
    assert _reaches(("model", "encoders", "training", "methods"), ("pretrained",)) == []


def test_evaluation_never_builds_training_examples():
    """eval/ runs a trained model over problems; examples and batches are built in data/ and training/."""
    assert _reaches(("eval", "inference"), ("data", "training")) == []


def test_the_benchmark_side_knows_nothing_of_adapters():
    """scienceqa/ reads, prompts, scores and generates ScienceQA; of the library it uses only the error root,
    atomic writes and the shared JSON parser (the same checks as every other file)."""
    allowed = {"mm_adapter.errors", "mm_adapter.files", "mm_adapter.files.atomic", "mm_adapter.files.text"}
    assert [line for line in _reaches(("scienceqa",), tuple(LAYERS)) if line.split(" -> ")[1] not in allowed
            and layer(line.split(" -> ")[1]) != "scienceqa"] == []


def test_no_package_imports_the_command_line_or_the_jobs():
    """cli/ is the top: only ``python -m mm_adapter`` reaches it; the library never reaches the application."""
    assert [line for line in _reaches(tuple(LAYERS), ("cli",)) 
            if not line.startswith(("mm_adapter.cli", "mm_adapter.__main__"))] == []
    library = tuple(name for name in LAYERS if name not in APPLICATION)
    assert _reaches(library, APPLICATION) == []


def test_no_import_circle():
    """No set of modules imports each other in a loop (lazy imports included): each can be read, tested and
    moved knowing only what is below it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in GRAPH[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            members = []
            while True:
                member = stack.pop()
                members.append(member)
                if member == node:
                    break
            if len(members) > 1:
                circles.append(sorted(members))

    for node in sorted(GRAPH):
        if node not in index:
            visit(node)
    assert circles == []
