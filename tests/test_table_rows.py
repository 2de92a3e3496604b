"""Rows of ``mm-adapter table`` are named by what they are and never collide, their costs come from their own eval
records, and the table's inputs are read through the checked readers and its outputs checked before any is written.

Each collision of issue 22 is built here as a user meets it: a LoRA run and a LLaMA-Adapter run evaluated from their
best checkpoints (both were "BASE best (score)"), zero-shot in QCM-A and QCM-T (both "BASE zero-shot (score)"), and
an eval made with a relative ``--adapter`` tabled from another folder (whose same relative path is another run).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file
from test_eval_run import single_thread  # noqa: F401 (autouse fixture)
from test_eval_run_script import base_folder, official_layout  # noqa: F401 (fixture)
from test_methods import sqa_config

from mm_adapter.cli import main
from mm_adapter.data.config import ScienceQASource
from mm_adapter.eval.config import EvalConfig, TableConfig
from mm_adapter.eval.table import build_table
from mm_adapter.jobs.configs.evaluation import EvalScienceQAConfig
from mm_adapter.jobs.eval_scienceqa import eval_scienceqa
from mm_adapter.jobs.train_scienceqa import train_scienceqa
from mm_adapter.methods.config import LLAMA_ADAPTER, LORA
from mm_adapter.model.config import ModelOptions

OLD_EVAL = Path(__file__).with_name("fixtures") / "eval_folder_e0d5e09"


def evaluate(base: Path, data: Path, out: Path, adapter: str | None, **settings) -> str:
    """``eval scienceqa`` on the tiny val problems in this process; returns what it said on stderr."""
    said = io.StringIO()
    eval_settings = {"batch_size": 16, **settings.pop("eval", {})}
    with contextlib.redirect_stderr(said):
        eval_scienceqa(EvalScienceQAConfig(
            split="val", out=str(out), source=ScienceQASource(data=str(data)), adapter=adapter,
            model=ModelOptions(base=str(base), device="cpu", dtype="fp32"), eval=EvalConfig(**eval_settings),
            bootstrap=0, progress=False, **settings))
    return said.getvalue()


@pytest.fixture(scope="module")
def runs(base_folder, tmp_path_factory) -> dict[str, Path]:
    """A LLaMA-Adapter run ``ours`` and a LoRA run ``lora`` of the same budget, on the same data."""
    root = tmp_path_factory.mktemp("runs")
    data = official_layout(root / "data")
    found = {"data": data}
    for name, method in (("ours", LLAMA_ADAPTER), ("lora", LORA)):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            train_scienceqa(sqa_config(base_folder, data, root / name, method))
        found[name] = root / name
    return found


def trainable_in(adapter: Path) -> int:
    """What the adapter itself says it trains: our file's tensors, another method's folder record (read here without
    the library, so the collision tests also run against the code before run records)."""
    if adapter.is_dir():
        return json.loads((adapter / "mm_adapter.json").read_text())["trainable_parameters"]["total"]
    from safetensors import safe_open

    with safe_open(str(adapter), framework="pt") as handle:
        return sum(handle.get_tensor(key).numel() for key in handle.keys())


def table(capsys, *args) -> tuple[int, str, str]:
    code = main(["table", *(str(a) for a in args)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def evals(runs, base_folder, tmp_path_factory) -> dict[str, Path]:
    """Eval folders of the two runs' best checkpoints (given as files, as the issue's user did) and of zero-shot
    in two formats, all on the tiny val split."""
    root = tmp_path_factory.mktemp("evals")
    found = {}
    for name, adapter in (("ours", runs["ours"] / "best.safetensors"), ("lora", runs["lora"] / "best")):
        evaluate(base_folder, runs["data"], root / name, str(adapter))
    for fmt in ("QCM-A", "QCM-T"):
        evaluate(base_folder, runs["data"], root / fmt, None, eval={"format": fmt})
    for name in ("ours", "lora", "QCM-A", "QCM-T"):
        found[name] = root / name
    return found


def test_a_lora_row_and_a_llama_adapter_row_have_their_own_names_and_costs(evals, runs, capsys):
    """Both runs' best checkpoints evaluated: two rows named by method and run, each with its own run's trainable
    count (on the old code both were 'BASE best (score)' and one row showed the other's costs)."""
    code, out, err = table(capsys, evals["ours"], evals["lora"], "--problems", runs["data"], "--costs", "--json", "-")
    assert code == 0, err
    rows = json.loads(out)["rows"]
    assert [row["method"] for row in rows] == ["llama-adapter ours/best QCM-T val", "lora lora/best QCM-T val"]
    ours, lora = trainable_in(runs["ours"] / "best.safetensors"), trainable_in(runs["lora"] / "best")
    assert ours != lora
    assert [row["costs"]["trainable"] for row in rows] == [ours, lora]
    assert [row["split"] for row in rows] == ["val", "val"]


def test_zero_shot_in_two_formats_gives_two_rows_and_named_mcnemar_pairs(evals, runs, base_folder, capsys):
    """Zero-shot QCM-A and QCM-T are two rows, and the McNemar test names both (not 'zero-shot vs zero-shot')."""
    code, out, err = table(capsys, evals["QCM-A"], evals["QCM-T"], "--problems", runs["data"], "--mcnemar", "--json",
                           "-")
    assert code == 0, err
    document = json.loads(out)
    base = base_folder.name
    names = [f"zero-shot {base} QCM-A val", f"zero-shot {base} QCM-T val"]
    assert [row["method"] for row in document["rows"]] == names
    assert [(t["a"], t["b"]) for t in document["mcnemar"]] == [tuple(names)]


def test_rows_that_would_print_the_same_name_are_refused_unless_named(evals, tmp_path, capsys):
    """The same evaluation twice (copied): refused in one line naming both; --name tells them apart (one per file)."""
    twin = tmp_path / "twin"
    shutil.copytree(evals["ours"], twin)
    code, out, err = table(capsys, evals["ours"], twin)
    assert code == 2 and err.count("\n") == 1 and out == ""
    assert f"{twin / 'predictions.json'}: its row would be named 'llama-adapter ours/best QCM-T val' like the row " \
           f"of {evals['ours'] / 'predictions.json'}; tell them apart with --name" in err
    code, out, err = table(capsys, evals["ours"], twin, "--name", "first", "second", "--json", "-")
    assert code == 0 and [row["method"] for row in json.loads(out)["rows"]] == ["first", "second"], err
    code, _, err = table(capsys, evals["ours"], twin, "--name", "one")
    assert code == 2 and "--name: 1 name(s) for 2 PREDICTIONS" in err and err.count("\n") == 1


def test_costs_come_from_the_eval_record_not_the_folder_table_runs_in(runs, base_folder, tmp_path, monkeypatch,
                                                                      capsys):
    """An eval made with the relative --adapter run/best.safetensors in one folder, tabled from another folder where
    that relative path is another run: the costs are still those of the run evaluated (the old code read the other
    run's)."""
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir()
    shutil.copytree(runs["ours"], here / "run")
    monkeypatch.chdir(here)
    evaluate(base_folder, runs["data"], tmp_path / "eval", "run/best.safetensors")
    (there / "run").mkdir(parents=True)
    save_file({"layers.3.prompt": torch.zeros(3, 10), "layers.3.gate": torch.zeros(4)},
              str(there / "run" / "best.safetensors"))
    (there / "run" / "metrics.jsonl").write_text(json.dumps({"step": 1, "elapsed_s": 1.0, "step_s": 9.0,
                                                             "peak_mb": 1.0}) + "\n")
    monkeypatch.chdir(there)
    code, out, err = table(capsys, tmp_path / "eval", "--problems", runs["data"], "--costs", "--json", "-")
    assert code == 0, err
    costs = json.loads(out)["rows"][0]["costs"]
    assert costs["trainable"] == trainable_in(here / "run" / "best.safetensors") != 34
    assert costs["step_s"] != 9.0


def test_an_adapter_changed_since_its_evaluation_gives_no_costs_and_says_why(evals, runs, tmp_path, capsys):
    """The eval record holds the adapter's digest: a file retrained in place is not the one the row evaluated."""
    run = tmp_path / "run"
    shutil.copytree(runs["ours"], run)
    folder = tmp_path / "eval"
    shutil.copytree(evals["ours"], folder)
    record = json.loads((folder / "eval.json").read_text())
    record["adapter"] |= {"path": str(run / "best.safetensors"), "run": str(run)}
    (folder / "eval.json").write_text(json.dumps(record))
    shutil.copyfile(run / "adapter.safetensors", run / "best.safetensors")
    code, out, err = table(capsys, folder, "--costs", "--json", "-")
    assert code == 0 and "costs" not in json.loads(out)["rows"][0]
    assert f"its adapter {run / 'best.safetensors'} changed since it was evaluated; no costs shown" in err


def test_problems_come_from_the_eval_records_unless_given(evals, runs, tmp_path, capsys):
    """Without --problems the records' problems file is used; a bare predictions file needs --problems; rows
    evaluated on different problems files are refused, naming them."""
    code, out, err = table(capsys, evals["ours"], "--json", "-")
    assert code == 0 and json.loads(out)["rows"][0]["n"]["Avg"] == 7, err
    bare = tmp_path / "bare.json"
    shutil.copyfile(evals["ours"] / "predictions.json", bare)
    code, _, err = table(capsys, bare)
    assert code == 2 and err.count("\n") == 1 and f"--problems: needed, since {bare} records no problems file" in err
    other = tmp_path / "other"
    shutil.copytree(evals["lora"], other)
    shutil.copytree(runs["data"], tmp_path / "data2")
    record = json.loads((other / "eval.json").read_text())
    record["data"]["problems_file"] = str(tmp_path / "data2" / "problems.json")
    (other / "eval.json").write_text(json.dumps(record))
    code, _, err = table(capsys, evals["ours"], other)
    assert code == 2 and err.count("\n") == 1 and "--problems: the rows were evaluated on different problems" in err
    shutil.rmtree(tmp_path / "data2")
    code, _, err = table(capsys, other)
    assert code == 2 and err.count("\n") == 1
    assert f"--problems: {other}'s record names {tmp_path / 'data2' / 'problems.json'}, which is not there" in err


def test_rows_of_different_splits_are_marked_and_not_paired(evals, runs, base_folder, tmp_path, capsys):
    """A val[:3] row beside a val row: the names say which, a note says they differ, McNemar between them is
    refused; published rows carry their split (test)."""
    evaluate(base_folder, runs["data"], tmp_path / "few", None, limit=3, eval={"format": "QCM-A"})
    reference = tmp_path / "published.json"
    reference.write_text(json.dumps({"LLaMA-Adapter": {"Avg": 85.19}}))
    code, out, err = table(capsys, evals["QCM-A"], tmp_path / "few", "--reference", reference)
    assert code == 0, err
    assert f"| **zero-shot {base_folder.name} QCM-A val[:3]** |" in out
    assert "| LLaMA-Adapter (published, test) |" in out
    assert "note: the rows cover different splits or limits (val, val[:3])" in err
    code, _, err = table(capsys, evals["QCM-A"], tmp_path / "few", "--mcnemar")
    assert code == 2 and err.count("\n") == 1 and "a paired test needs the same problems" in err


def test_an_eval_folder_from_before_the_record_still_loads(tmp_path, capsys, monkeypatch):
    """The committed eval folder of commit e0d5e09 (config.yaml with the relative --adapter run/best.safetensors):
    its row keeps its file's name, and --costs shows none for it, saying why, even from a folder where
    run/best.safetensors exists (it is never resolved against the folder table runs in)."""
    (tmp_path / "run").mkdir()
    save_file({"layers.3.prompt": torch.zeros(3, 10)}, str(tmp_path / "run" / "best.safetensors"))
    monkeypatch.chdir(tmp_path)
    code, out, err = table(capsys, OLD_EVAL / "eval", "--problems", OLD_EVAL / "data", "--costs", "--json", "-")
    assert code == 0, err
    row = json.loads(out)["rows"][0]
    assert row["method"] == "base best (score)" and row["n"]["Avg"] == 7 and "costs" not in row
    assert "relative path 'run/best.safetensors'" in err and "no costs shown" in err
    from mm_adapter.eval.record import eval_record

    record = eval_record(OLD_EVAL / "eval")
    assert record.split == "val" and record.prompt_format == "QCM-A" and record.adapter is None
    assert record.unresolved == "run/best.safetensors"


# ----- issue 23, item 5: the table's inputs are read through the checked readers ----------------------------------

def old_style_eval(root: Path, adapter: Path) -> Path:
    """An eval folder as the old code wrote it (config.yaml naming the adapter by an absolute path)."""
    folder = root / "eval"
    shutil.copytree(OLD_EVAL / "eval", folder)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    (folder / "config.yaml").write_text(yaml.safe_dump({**config, "adapter": str(adapter)}))
    return folder


@pytest.mark.parametrize("line, field", [('{"step": 1, "step_s": "fast"}', "step_s"),
                                         ('{"step": 1, "elapsed_s": 2, "peak_mb": NaN}', "peak_mb"),
                                         ('{"step": 1, "elapsed_s": [1]}', "elapsed_s")])
def test_a_bad_metrics_log_is_one_line_naming_the_file_line_and_field(tmp_path, capsys, line, field):
    """A cost field that is not a finite number is refused in one line (the old code's bare float() was a bug
    report, exit 1, or a NaN printed as a cost)."""
    run = tmp_path / "run"
    run.mkdir()
    save_file({"layers.3.prompt": torch.zeros(3, 10)}, str(run / "best.safetensors"))
    (run / "metrics.jsonl").write_text(line + "\n" + json.dumps({"step": 2, "step_s": 1.0}) + "\n")
    folder = old_style_eval(tmp_path, run / "best.safetensors")
    code, out, err = table(capsys, folder, "--problems", OLD_EVAL / "data", "--costs")
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert f"{run / 'metrics.jsonl'}: line 1: metrics row field {field!r} must be a finite number" in err


def test_a_corrupt_adapter_file_is_one_line(tmp_path, capsys):
    """--costs counts the adapter's tensors through the checked safetensors reader: a truncated file is one line
    naming it (the old code's bare safe_open ended in a bug report)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    folder = old_style_eval(tmp_path, run / "best.safetensors")
    code, out, err = table(capsys, folder, "--problems", OLD_EVAL / "data", "--costs")
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert str(run / "best.safetensors") in err


@pytest.mark.parametrize("flag", ["--plot", "--cost-plot"])
def test_every_output_is_checked_before_any_is_written(tmp_path, capsys, flag):
    """An output that cannot be written (a folder given as the chart's file) is refused before the JSON, CSV or
    Markdown is written: nothing is left half-done (the old code wrote them first, then failed)."""
    (tmp_path / "chart.png").mkdir()
    extra = ["--costs"] if flag == "--cost-plot" else []
    code, _, err = table(capsys, OLD_EVAL / "eval", "--problems", OLD_EVAL / "data", "--json", tmp_path / "t.json",
                         "--csv", tmp_path / "t.csv", "--markdown", tmp_path / "t.md", flag, tmp_path / "chart.png",
                         *extra)
    assert code == 2 and err.count("\n") == 1 and f"{flag} {tmp_path / 'chart.png'}: is a folder" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chart.png"]


def test_build_table_takes_the_problems_from_the_records(evals):
    """The library call needs no problems either (the records name them)."""
    result = build_table(TableConfig(predictions=[str(evals["ours"])], markdown=None, json=None))
    assert [s.name for s in result.scores] == ["llama-adapter ours/best QCM-T val"]


def test_an_old_eval_config_with_yaml_aliases_is_one_line(tmp_path, capsys):
    """An old folder's config.yaml is read without YAML aliases (mm-adapter never writes one; a crafted file could
    expand without bound), refused in one line naming it."""
    folder = tmp_path / "eval"
    shutil.copytree(OLD_EVAL / "eval", folder)
    (folder / "config.yaml").write_text("command: eval scienceqa\nbase: &a [x, x]\nsplit: *a\n")
    code, out, err = table(capsys, folder, "--problems", OLD_EVAL / "data")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert f"{folder / 'config.yaml'}: not a config.yaml of mm-adapter (an alias" in err


def test_a_bare_predictions_file_beside_an_eval_folder_is_paired_as_before(evals, runs, tmp_path, capsys):
    """A predictions file without a record (a published one) names no split: it does not make the rows "mixed", so
    McNemar against it works and names stay as they were."""
    bare = tmp_path / "published_val.json"
    results = json.loads((evals["QCM-A"] / "predictions.json").read_text())["results"]
    bare.write_text(json.dumps({"method": "Published", "results": {pid: 0 for pid in results}}))
    code, out, err = table(capsys, evals["QCM-A"], bare, "--problems", runs["data"], "--mcnemar", "--json", "-")
    assert code == 0 and "different splits" not in err, err
    assert [t["b"] for t in json.loads(out)["mcnemar"]] == ["Published"]


def test_problems_changed_since_the_evaluation_are_refused(evals, runs, tmp_path, capsys):
    """eval.json fingerprints what the problems file said of the problems answered: a table against that file,
    edited since (an answer changed), is refused in one line instead of scoring against other answers."""
    data = tmp_path / "data"
    shutil.copytree(runs["data"], data)
    folder = tmp_path / "eval"
    shutil.copytree(evals["ours"], folder)
    record = json.loads((folder / "eval.json").read_text())
    record["data"]["problems_file"] = str(data / "problems.json")
    (folder / "eval.json").write_text(json.dumps(record))
    assert table(capsys, folder)[0] == 0
    problems = json.loads((data / "problems.json").read_text())
    problems["p2"]["answer"] = 1
    (data / "problems.json").write_text(json.dumps(problems))
    code, out, err = table(capsys, folder)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert f"{data / 'problems.json'}: its problems changed since {folder} was evaluated on them" in err
