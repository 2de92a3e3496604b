"""bench/methods.py on a tiny Llama and a tiny generated ScienceQA set: each method's learning rates are trained, the
best on val is evaluated on test once, and the comparison table (bootstrap intervals, McNemar against llama-adapter,
cost columns, chart) is written; a second call trains and evaluates nothing again. Issue 25's protocol: grids whose
choice is reported interior or at an edge, further seeds of the chosen lr, the seeds summary and its targets."""

from __future__ import annotations

import json

import pytest

from bench import methods
from test_formats_training import tiny_sqa_folder


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    return tiny_sqa_folder(tmp_path_factory.mktemp("methods"), {"train": 16, "val": 8, "test": 8})


def test_methods_are_searched_on_val_tested_once_and_tabled(tiny_set, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MM_ADAPTER_CACHE", str(tmp_path / "cache"))
    base, data = tiny_set
    argv = ["--data", str(data), "--out", str(tmp_path / "out"), "--base", str(base), "--only", "llama-adapter",
            "lora", "--adapter-len", "4", "--adapter-layers", "2", "--quiet", "--grid", "5e-4,5e-3"]
    assert methods.main(argv) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    runs = [(row["method"], row["lr"]) for row in lines if "lr" in row]
    assert runs == [("llama-adapter", 5e-4), ("llama-adapter", 5e-3), ("lora", 5e-4), ("lora", 5e-3)]
    tested = {row["method"]: row for row in lines if "chosen_lr" in row}
    for name, row in tested.items():
        scores = {lr: methods.best_val(tmp_path / "out" / f"{name}-lr{lr:g}")[0] for lr in (r[1] for r in runs
                                                                                          if r[0] == name)}
        assert row["val"] == max(scores.values()) and scores[row["chosen_lr"]] == row["val"]
    assert set(tested) == {"llama-adapter", "lora"}
    table = (tmp_path / "out" / "table.md").read_text()
    assert "**llama-adapter**" in table and "**lora**" in table and "trainable" in table
    assert "| llama-adapter | lora |" in table  # the McNemar row against ours
    assert (tmp_path / "out" / "table.png").stat().st_size > 0
    rows = {row["method"]: row["costs"] for row in json.loads((tmp_path / "out" / "table.json").read_text())["rows"]}
    lora_lr = tested["lora"]["chosen_lr"]
    record = json.loads((tmp_path / "out" / f"lora-lr{lora_lr:g}" / "best" / "mm_adapter.json").read_text())
    assert rows["lora"]["trainable"] == record["trainable_parameters"]["total"]  # read from its folder
    assert rows["llama-adapter"]["trainable"] == 2 * (4 * 64 + 4)  # 2 layers x (4 prompts x 64 + 4 gates)
    assert (tmp_path / "out" / "costs.png").stat().st_size > 0
    search = (tmp_path / "out" / "search.md").read_text().splitlines()
    for name, row in tested.items():
        line = next(line for line in search if line.startswith(f"| {name} |"))
        chosen = f"{row['chosen_lr']:g}"
        assert f"{chosen}: **{100 * row['val']:.2f}**" in line and line.endswith(f"| {chosen} | edge: widen |")
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*") if p.suffix in (".safetensors", ".json")
              and "table" not in p.name and "seeds" not in p.name}  # the summaries are rewritten, the same
    assert methods.main(argv) == 0
    assert not [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_llama_adapter_v2_is_searched_tested_and_tabled_with_its_count(tiny_set, tmp_path, capsys, monkeypatch):
    """The harness lists --method llama-adapter-v2 on the prompts' grid; its table row counts prompts, gates, the
    bias and scale of every linear layer and the norms (read from its best adapter file)."""
    monkeypatch.setenv("MM_ADAPTER_CACHE", str(tmp_path / "cache"))
    base, data = tiny_set
    argv = ["--data", str(data), "--out", str(tmp_path / "out"), "--base", str(base), "--only", "llama-adapter-v2",
            "--adapter-len", "4", "--adapter-layers", "2", "--quiet", "--grid", "5e-3,1e-2"]
    assert methods.main(argv) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [row.get("lr", "test") for row in lines] == [5e-3, 1e-2, "test"]
    rows = {row["method"]: row["costs"] for row in json.loads((tmp_path / "out" / "table.json").read_text())["rows"]}
    linears = 64 + 32 + 32 + 64 + 96 + 96 + 64  # q, k, v, o, gate, up, down outputs of the tiny GQA Llama
    assert rows["llama-adapter-v2"]["trainable"] == 2 * (4 * 64 + 4) + 4 * 2 * linears + 9 * 64


def test_two_workers_split_one_search_with_lr_and_the_last_one_tests(tiny_set, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MM_ADAPTER_CACHE", str(tmp_path / "cache"))
    base, data = tiny_set
    argv = ["--data", str(data), "--out", str(tmp_path / "out"), "--base", str(base), "--only", "llama-adapter",
            "--adapter-len", "4", "--adapter-layers", "2", "--quiet", "--grid", "5e-3,1e-2"]
    assert methods.main([*argv, "--lr", "0.01"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [(row["method"], row["lr"]) for row in lines] == [("llama-adapter", 1e-2)]  # 5e-3 untrained: no test
    assert not (tmp_path / "out" / "llama-adapter-test").exists()
    assert "| llama-adapter | 0.005: (not trained), 0.01: " in (tmp_path / "out" / "search.md").read_text()
    assert "| search not finished |" in (tmp_path / "out" / "search.md").read_text()
    assert methods.main([*argv, "--lr", "0.005"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [row.get("lr", "test") for row in lines] == [5e-3, "test"]
    assert (tmp_path / "out" / "llama-adapter-test" / "predictions.json").is_file()


def test_an_lr_outside_the_grids_is_one_line_and_exit_2(tiny_set, tmp_path, capsys):
    _, data = tiny_set
    with pytest.raises(SystemExit) as stopped:
        methods.main(["--data", str(data), "--out", str(tmp_path / "out"), "--only", "lora", "--lr", "0.02"])
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.endswith("--lr 0.02 is in no chosen method's grid (0.0005, 0.002, 0.005, 0.01)")
    assert not (tmp_path / "out").exists()
