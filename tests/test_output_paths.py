"""No job writes over, or deletes, one of its own inputs: every output path is compared with every input first.

An input clashes with a file the job writes (the same path, a symlink to it, or a hard link: the
same inode) and with a folder the job owns as a whole (checkpoints/, a PEFT export, main's
generated data/). Each case goes through ``mm-adapter`` in this process and through the job
function (the library API); one goes through ``python -m mm_adapter`` in a real process. Every
refusal is one line naming the input flag and the path, exit 2, before anything is written:
every pre-existing file keeps its bytes and no folder appears.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from mm_adapter import MMAdapterError
from mm_adapter.cli.commands import find
from mm_adapter.cli.parse import parse
from mm_adapter.files.output_folder import Output, check_no_overlap, outputs_in
from tiny_text import REPO, command_here, records, tiny_base_folder, write_records

Case = Callable[[Path, Path], tuple[list[str], str]]  # (scratch folder, tiny base) -> (argv, what the line says)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tiny_base_folder(tmp_path_factory.mktemp("overlap") / "base")


def alpaca_data(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_records(path, records(8))


def scienceqa_data(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    problem = {"question": "Which is a colour?", "choices": ["red", "sky"], "answer": 0, "hint": "", "image": None,
               "subject": "natural science", "grade": "grade2", "split": "val"}
    (folder / "problems.json").write_text(json.dumps({"1": problem}))
    (folder / "pid_splits.json").write_text(json.dumps({"train": ["1"], "val": ["1"], "test": ["1"]}))
    return folder


def link(source: Path, name: Path) -> Path:
    """``name`` as a hard link to ``source`` (the same inode under another name)."""
    name.parent.mkdir(parents=True, exist_ok=True)
    os.link(source, name)
    return name


def alpaca_linked(tmp: Path, name: Path) -> Path:
    """An Alpaca data file that is also ``name`` (a hard link)."""
    data = alpaca_data(tmp / "data.json")
    link(data, name)
    return data


def scienceqa_linked(tmp: Path, name: Path) -> Path:
    """A ScienceQA folder whose problems.json is also ``name`` (a hard link)."""
    folder = scienceqa_data(tmp / "sqa")
    link(folder / "problems.json", name)
    return folder


def symlink(target: Path, name: Path) -> Path:
    name.symlink_to(target)
    return name


def train_alpaca(tmp: Path, base: Path, data: Path, *extra: str) -> list[str]:
    return ["train", "alpaca", "--base", str(base), "--data", str(data), "--out", str(tmp / "run"),
            "--adapter-layers", "2", *extra]


def train_sqa(tmp: Path, base: Path, *source: str) -> list[str]:
    return ["train", "scienceqa", "--base", str(base), *source, "--out", str(tmp / "run"), "--adapter-layers", "2"]


def eval_sqa(tmp: Path, base: Path, data: Path, *extra: str) -> list[str]:
    return ["eval", "scienceqa", "--base", str(base), "--data", str(data), "--split", "val", "--out",
            str(tmp / "run"), *extra]


def table(tmp: Path, predictions: Path, *extra: str) -> list[str]:
    problems = scienceqa_data(tmp / "sqa") / "problems.json"
    return ["table", str(predictions), "--problems", str(problems), *extra]


def predictions(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"results": {"1": 0}}))
    return path


def peft_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "ADAPTION_PROMPT"}))
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    return folder


def main_job(tmp: Path, *extra: str) -> list[str]:
    return ["main", "--out", str(tmp / "run"), "--no-hub", *extra]


CASES: dict[str, Case] = {
    "alpaca --data is the run's metrics.jsonl": lambda t, b: (
        train_alpaca(t, b, alpaca_data(t / "run" / "metrics.jsonl")), "--out writes"),
    "alpaca --data is the run's config.yaml": lambda t, b: (
        train_alpaca(t, b, alpaca_data(t / "run" / "config.yaml")), "config.yaml"),
    "alpaca --data hard-linked as the run's loss.png": lambda t, b: (
        train_alpaca(t, b, alpaca_linked(t, t / "run" / "loss.png")), "loss.png (the same file under another name)"),
    "alpaca --data a symlink to the run's adapter": lambda t, b: (
        train_alpaca(t, b, symlink(alpaca_data(t / "run" / "adapter.safetensors"), t / "data.json")),
        "adapter.safetensors; refusing to overwrite"),
    "alpaca --data inside checkpoints/": lambda t, b: (
        train_alpaca(t, b, alpaca_data(t / "run" / "checkpoints" / "data.json")), "which --out replaces"),
    "alpaca --resume with --data the run's metrics.jsonl": lambda t, b: (
        train_alpaca(t, b, alpaca_data(t / "run" / "metrics.jsonl"), "--resume"), "metrics.jsonl"),
    "alpaca --base inside checkpoints/": lambda t, b: (
        ["train", "alpaca", "--base", str(shutil.copytree(b, t / "run" / "checkpoints" / "base")), "--data",
         str(alpaca_data(t / "data.json")), "--out", str(t / "run"), "--adapter-layers", "2"], "--base"),
    "scienceqa --data inside checkpoints/": lambda t, b: (
        train_sqa(t, b, "--data", str(scienceqa_data(t / "run" / "checkpoints" / "sqa"))), "which --out replaces"),
    "scienceqa problems.json hard-linked as best.safetensors": lambda t, b: (
        train_sqa(t, b, "--data", str(scienceqa_linked(t, t / "run" / "best.safetensors"))),
        "best.safetensors (the same file under another name)"),
    "scienceqa --hf file is the run's validation.jsonl": lambda t, b: (
        train_sqa(t, b, "--hf", str(predictions(t / "run" / "validation.jsonl"))), "--hf"),
    "eval --reference is the run's summary.json": lambda t, b: (
        eval_sqa(t, b, scienceqa_data(t / "sqa"), "--reference", str(predictions(t / "run" / "summary.json"))),
        "--reference"),
    "eval --reference is the partial predictions": lambda t, b: (
        eval_sqa(t, b, scienceqa_data(t / "sqa"), "--reference",
                 str(predictions(t / "run" / "predictions.partial.jsonl"))), "predictions.partial.jsonl"),
    "eval --adapter is the run's predictions.json": lambda t, b: (
        eval_sqa(t, b, scienceqa_data(t / "sqa"), "--adapter", str(predictions(t / "run" / "predictions.json"))),
        "--adapter"),
    "eval problems.json hard-linked as table.md": lambda t, b: (
        eval_sqa(t, b, scienceqa_linked(t, t / "run" / "table.md")), "table.md (the same file under another name)"),
    "table --csv is a predictions file": lambda t, b: (
        table(t, predictions(t / "a.json"), "--csv", str(t / "a.json")), "--csv writes"),
    "table --out holds a predictions file as table.json": lambda t, b: (
        table(t, predictions(t / "run" / "table.json"), "--out", str(t / "run")), "--out writes"),
    "table --markdown hard-linked to the reference": lambda t, b: (
        table(t, predictions(t / "a.json"), "--reference", str(predictions(t / "ref.json")), "--markdown",
              str(link(t / "ref.json", t / "table.md"))), "under another name"),
    "table --plot a symlink to problems.json": lambda t, b: (
        table(t, predictions(t / "a.json"), "--plot", str(symlink(t / "sqa" / "problems.json", t / "p.png"))),
        "--problems"),
    "convert OUTPUT is INPUT": lambda t, b: (
        ["convert", "--base", str(b), "--overwrite", str(predictions(t / "a.safetensors")), str(t / "a.safetensors")],
        "OUTPUT writes"),
    "convert PEFT folder onto itself": lambda t, b: (
        ["convert", "--from", "peft", "--to", "peft", "--base", str(b), "--overwrite", str(peft_folder(t / "peft")),
         str(t / "peft")], "which OUTPUT replaces"),
    "convert PEFT export over the base": lambda t, b: (
        ["convert", "--to", "peft", "--base", str(shutil.copytree(b, t / "export" / "base")), "--overwrite",
         str(predictions(t / "a.safetensors")), str(t / "export")], "--base"),
    "convert PEFT weights onto themselves": lambda t, b: (
        ["convert", "--from", "peft", "--base", str(b), "--overwrite", str(peft_folder(t / "peft")),
         str(t / "peft" / "adapter_model.safetensors")], "adapter_model.safetensors; refusing"),
    "main --data inside the training's checkpoints/": lambda t, b: (
        main_job(t, "--data", str(scienceqa_data(t / "run" / "adapter" / "checkpoints" / "sqa"))), "replaces"),
    "main problems.json hard-linked as the test predictions": lambda t, b: (
        main_job(t, "--data", str(scienceqa_linked(t, t / "run" / "test" / "predictions.json"))),
        "predictions.json (the same file under another name)"),
    "main --base inside the data folder it generates": lambda t, b: (
        main_job(t, "--base", str(shutil.copytree(b, t / "run" / "data" / "base"))), "--base"),
}


def tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` (folders as None, files and links by content)."""
    return {str(p): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("case", list(CASES))
def test_an_output_that_is_an_input_is_refused_in_one_line(base, tmp_path, capsys, case):
    """Each case: the command exits 2 with one line that says which input is at stake and which output flag would
    write it; the job function raises the same line; nothing changes on disk."""
    argv, expected = CASES[case](tmp_path, base)
    before, base_before = tree(tmp_path), tree(base)
    code, _, err = command_here(argv, capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(("error: --", "error: INPUT", "error: PREDICTIONS"))
    assert " is one of the inputs, but " in err and "(choose another " in err and expected in err, err
    command = find(argv)[0]
    with pytest.raises(MMAdapterError) as raised:
        command.job_function()(parse(command, argv[len(command.words):]))
    assert f"error: {raised.value}\n" == err
    assert tree(tmp_path) == before and tree(base) == base_before


def test_the_issue_case_in_a_real_process(base, tmp_path):
    """The issue's case as a user runs it: ``python -m mm_adapter train alpaca --data RUN/metrics.jsonl --out RUN``
    exits 2 with one line naming --data and the file, and the data file keeps its bytes (it used to be replaced
    by the metrics log, exit 0)."""
    data = alpaca_data(tmp_path / "run" / "metrics.jsonl")
    before = data.read_bytes()
    done = subprocess.run([sys.executable, "-m", "mm_adapter", *train_alpaca(tmp_path, base, data)], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith(f"error: --data {data} is one of the inputs, but --out writes {data}")
    assert data.read_bytes() == before and sorted(p.name for p in data.parent.iterdir()) == ["metrics.jsonl"]


def test_inputs_beside_or_around_the_outputs_are_fine(tmp_path):
    """Only real clashes are refused: data kept in the output folder under a name the job does not write, an output
    folder inside the data folder, a base folder that holds the run, inputs that do not exist (yet)."""
    out = tmp_path / "data" / "run"
    written = outputs_in("--out", out, ["metrics.jsonl", "config.yaml"], folders=["checkpoints"])
    scienceqa_data(tmp_path / "data")
    (out / "checkpoints").mkdir(parents=True)
    records_file = alpaca_data(out / "records.json")
    check_no_overlap(written, {"--data": records_file, "--hf": tmp_path / "data", "--base": "smollm2-135m",
                               "--reference": None, "--adapter": out / "adapter.safetensors"})
    check_no_overlap([Output("OUTPUT", tmp_path / "data" / "export", folder=True)], {"INPUT": tmp_path / "data"})


def test_a_folder_input_stands_for_the_files_in_it(tmp_path):
    """A folder given as an input (a base model, a PEFT folder, a data set) clashes through any file directly in
    it, and when it lies inside a folder the job replaces; the line names the file."""
    folder = scienceqa_data(tmp_path / "sqa")
    with pytest.raises(MMAdapterError, match=r"--data .*sqa/problems.json is one of the inputs, but --out writes"):
        check_no_overlap(outputs_in("--out", folder, ["problems.json"]), {"--data": folder})
    with pytest.raises(MMAdapterError, match=r"--data .*sqa is one of the inputs, but it lies inside"):
        check_no_overlap([Output("OUTPUT", tmp_path, folder=True)], {"--data": folder})
