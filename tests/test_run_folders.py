"""A run folder is the unit of work: every training command records its run (``run.json``), a run folder is taken
wherever an adapter is (its chosen adapter, else its final one, and the command says which), an adapter is named
after its run, and an eval folder records what it evaluated (``eval.json``) with its paths resolved when it ran.

The runs are tiny (7 problems, 2 epochs of 2 steps on the tiny Llama); each is trained once per module.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_eval_run import single_thread  # noqa: F401 (autouse fixture)
from test_eval_run_script import base_folder  # noqa: F401 (fixture)
from test_table_rows import evaluate, runs, trainable_in  # noqa: F401 (fixture)
from tiny_text import arguments, command_here, records, tiny_base_folder, write_records

from mm_adapter import from_pretrained, load_base
from mm_adapter.eval.record import eval_record
from mm_adapter.jobs.generate import read_all
from mm_adapter.methods.config import LLAMA_ADAPTER, LORA
from mm_adapter.methods.run_record import disk_bytes, read_run_record
from mm_adapter.pretrained import adapter_name, loaded_adapter, locate_adapter


def test_a_training_run_records_what_it_is_and_what_it_cost(runs, base_folder):
    """run.json: method and sizes, base identity and spec, prompt format, data source (absolute) and fingerprint, split
    sizes, seed, the chosen adapter and what chose it, and costs (trainable parameters as the adapter's tensors
    count them, wall time, s/step, peak memory, the chosen adapter's bytes)."""
    for name, method in (("ours", LLAMA_ADAPTER), ("lora", LORA)):
        record = read_run_record(runs[name])
        assert record["command"] == "train scienceqa" and record["method"] == method
        assert record["prompt_format"] == "QCM-T" and record["seed"] == 0
        assert record["base"]["spec"] == str(base_folder) and record["base"]["identity"]["num_layers"] == 4
        assert record["data"]["source"]["--data"] == str(runs["data"].resolve())
        assert len(record["data"]["fingerprint"]) == 16
        assert record["splits"] == {"train": {"name": "val", "problems": 7, "examples": 7},
                                    "val": {"name": "val", "problems": 7}}
        chosen = "best.safetensors" if method == LLAMA_ADAPTER else "best"
        assert record["adapters"]["chosen"] == chosen
        assert set(record["adapters"]["chosen_by"]) == {"val_accuracy", "step"}
        costs = record["costs"]
        assert costs["train_s"] > 0 and costs["step_s"] > 0 and costs["peak_mb"] > 0
        assert costs["adapter_bytes"] == disk_bytes(runs[name] / chosen)
    assert read_run_record(runs["lora"])["sizes"]["lora_rank"] >= 1
    ours = read_run_record(runs["ours"])
    assert ours["sizes"]["adapter"]["adapter_len"] == 4
    assert ours["costs"]["trainable"] == trainable_in(runs["ours"] / "best.safetensors")
    assert read_run_record(runs["lora"])["costs"]["trainable"] == trainable_in(runs["lora"] / "best")
    assert ours["costs"]["trainable"] != read_run_record(runs["lora"])["costs"]["trainable"]


def test_train_alpaca_records_its_run_with_no_chosen_adapter(tmp_path, capsys):
    """`train alpaca` (no validation) records its final adapter as what the run stands for, and the record's split
    sizes count the records read and the examples trained on."""
    base, data = tiny_base_folder(tmp_path / "base"), write_records(tmp_path / "data.json", records(8))
    code, _, err = command_here(["train", "alpaca", *arguments(base, data, tmp_path / "run")], capsys)
    assert code == 0, err
    record = read_run_record(tmp_path / "run")
    assert record["command"] == "train alpaca" and record["adapters"]["chosen"] is None
    assert record["adapters"]["final"] == "adapter.safetensors" and record["prompt_format"] is None
    assert record["splits"]["train"]["records"] == 8 and record["splits"]["train"]["examples"] == 8
    assert record["data"]["source"]["--data"] == str(data.resolve())
    assert locate_adapter(tmp_path / "run") == (LLAMA_ADAPTER, tmp_path / "run" / "adapter.safetensors")


def test_a_run_folder_is_taken_where_an_adapter_is_and_the_command_says_which(runs, base_folder, tmp_path):
    """--adapter RUN evaluates the run's chosen adapter and says so; the library's loader takes the folder too; the
    adapter is named after its run (RUN/best), so two runs never share a name."""
    said = evaluate(base_folder, runs["data"], tmp_path / "eval", str(runs["ours"]))
    assert f"{runs['ours']}: a training run; taking its chosen adapter best.safetensors (val_accuracy" in said
    assert locate_adapter(runs["ours"]) == (LLAMA_ADAPTER, runs["ours"] / "best.safetensors")
    assert locate_adapter(runs["lora"]) == (LORA, runs["lora"] / "best")
    assert adapter_name(runs["ours"]) == adapter_name(runs["ours"] / "best.safetensors") == "ours/best"
    assert adapter_name(runs["lora"] / "best") == "lora/best"
    assert adapter_name(runs["ours"] / "adapter.safetensors") == "ours/adapter"
    model, _ = load_base(str(base_folder), dtype="fp32")
    from_pretrained(model, runs["ours"])
    assert loaded_adapter(model).adapter.path == runs["ours"] / "best.safetensors"
    twin = tmp_path / "twin"
    shutil.copytree(runs["ours"], twin)
    assert set(read_all([str(runs["ours"] / "best.safetensors"), str(twin / "best.safetensors")], model)) == \
        {"ours/best", "twin/best"}


def test_a_run_folder_from_before_the_record_is_read_by_its_file_names(runs, tmp_path):
    """Without run.json a run folder stands for best.safetensors, else adapter.safetensors (the final one, which the
    command then calls final)."""
    old = tmp_path / "old"
    shutil.copytree(runs["ours"], old)
    (old / "run.json").unlink()
    assert locate_adapter(old) == (LLAMA_ADAPTER, old / "best.safetensors")
    (old / "best.safetensors").unlink()
    said = []
    assert locate_adapter(old, say=said.append) == (LLAMA_ADAPTER, old / "adapter.safetensors")
    assert said == [f"{old}: a training run; taking its final (the run chose none) adapter adapter.safetensors"]


def test_a_run_record_that_points_outside_its_folder_is_refused(runs, tmp_path, capsys):
    """The adapter names a record gives are checked against the run's own names: never a path elsewhere."""
    bad = tmp_path / "bad"
    shutil.copytree(runs["ours"], bad)
    record = json.loads((bad / "run.json").read_text())
    record["adapters"]["chosen"] = "../ours/best.safetensors"
    (bad / "run.json").write_text(json.dumps(record))
    code, _, err = command_here(["eval", "scienceqa", "--split", "val", "--data", str(runs["data"]), "--adapter",
                                 str(bad), "--out", str(tmp_path / "e"), "--base", "unused"], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert f"{bad / 'run.json'}: run record 'adapters' field 'chosen' must be one of adapter.safetensors" in err
    assert not (tmp_path / "e").exists()


def test_an_eval_folder_records_what_it_evaluated_with_absolute_paths(runs, base_folder, tmp_path, monkeypatch):
    """eval.json: the run and adapter (absolute, though given relative), its digest, the split and limit, the format,
    the problems file and a fingerprint of the problems answered; the row name says method, run, format, split."""
    monkeypatch.chdir(runs["ours"].parent)
    evaluate(base_folder, Path("data"), tmp_path / "eval", "ours/best.safetensors", limit=3)
    record = eval_record(tmp_path / "eval")
    assert record.adapter == runs["ours"].resolve() / "best.safetensors" and record.run == runs["ours"].resolve()
    assert record.split == "val" and record.limit == 3 and record.prompt_format == "QCM-T"
    assert record.problems_file == (runs["data"] / "problems.json").resolve() and len(record.fingerprint) == 16
    written = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert written["method"] == LLAMA_ADAPTER and written["adapter"]["given"] == "ours/best.safetensors"
    predictions = json.loads((tmp_path / "eval" / "predictions.json").read_text())
    assert predictions["method"] == "llama-adapter ours/best QCM-T val[:3]"


def test_convert_takes_a_run_folder_and_push_refuses_one(runs, base_folder, tmp_path, capsys):
    """`convert RUN OUT --to folder` writes the run's chosen adapter as an adapter folder; `push RUN` is refused in one
    line saying so (it uploads a folder's own files, and a run folder holds no adapter_config.json)."""
    from mm_adapter import MMAdapterError, push_to_hub
    from mm_adapter.model.adapter_file import read_adapter

    code, _, err = command_here(["convert", str(runs["ours"]), str(tmp_path / "folder"), "--to", "folder", "--base",
                                 str(base_folder)], capsys)
    assert code == 0, err
    assert f"{runs['ours']}: a training run; taking its chosen adapter best.safetensors" in err
    assert read_adapter(tmp_path / "folder" / "adapter_model.safetensors").layers.keys() == \
        read_adapter(runs["ours"] / "best.safetensors").layers.keys()
    with pytest.raises(MMAdapterError, match="a training run's folder, not an adapter folder; write its adapter"):
        push_to_hub(runs["ours"], "org/name", token="unused")


def test_the_demo_names_a_run_folders_adapter_after_its_run(runs, base_folder, capsys):
    """The demo (and serve) take a run folder and show "adapter ours/best", not "adapter best"."""
    from mm_adapter.demo.predictor import Predictor

    predictor = Predictor.load(str(base_folder), runs["ours"], dtype="fp32")
    assert predictor.adapter_name == "ours/best" and "adapter ours/best" in predictor.describe()
    assert "taking its chosen adapter best.safetensors" in capsys.readouterr().err
