"""The comparison table's extras: McNemar against one method, and cost columns read from the training runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from mm_adapter.cli import main
from mm_adapter.eval.config import TableConfig
from mm_adapter.eval.cost_plot import cost_plot_png
from mm_adapter.eval.run_costs import run_costs
from mm_adapter.eval.table import build_table

PROBLEMS = {str(i): {"question": f"q{i}", "choices": ["a", "b"], "answer": i % 2, "hint": "", "image": None,
                     "split": "test"} for i in range(40)}


def eval_folder(root: Path, name: str, answers: dict[str, int], adapter: Path | None) -> Path:
    """What `eval scienceqa --out FOLDER` leaves: predictions.json and config.yaml naming the adapter."""
    folder = root / f"{name}-test"
    folder.mkdir(parents=True)
    (folder / "predictions.json").write_text(json.dumps({"method": name, "results": answers}))
    (folder / "config.yaml").write_text(yaml.safe_dump({"split": "test", "adapter": str(adapter) if adapter else None}))
    return folder


def training_run(root: Path) -> Path:
    """A trained run: a 30 + 4 parameter adapter (and a feature-statistics buffer that is not trained), and a
    metrics log of a run killed after step 2 and resumed (elapsed_s restarts)."""
    folder = root / "run"
    folder.mkdir()
    save_file({"layers.3.prompt": torch.zeros(3, 10), "layers.3.gate": torch.zeros(4),
               "visual.feature_mean": torch.zeros(8)}, str(folder / "best.safetensors"))
    rows = [{"step": 1, "elapsed_s": 10.0, "step_s": 2.0, "peak_mb": 900.0},
            {"step": 2, "elapsed_s": 20.0, "step_s": 4.0, "peak_mb": 950.0},
            {"step": 3, "elapsed_s": 5.0, "step_s": 3.0, "peak_mb": 800.0}]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "elap')
    return folder / "best.safetensors"


@pytest.fixture
def files(tmp_path):
    problems = tmp_path / "problems.json"
    problems.write_text(json.dumps(PROBLEMS))
    right = {pid: p["answer"] for pid, p in PROBLEMS.items()}
    half = {pid: (a if int(pid) < 20 else 1 - a) for pid, a in right.items()}
    adapter = training_run(tmp_path)
    return problems, eval_folder(tmp_path, "ours", right, adapter), eval_folder(tmp_path, "other", half, None), \
        eval_folder(tmp_path, "third", half, None)


def test_costs_come_from_the_training_run_behind_the_eval_folder(files):
    """trainable = the adapter's stored tensors (buffers left out); wall time sums the parts of a resumed run;
    s/step is the median; peak is the maximum; a torn last metrics line is ignored."""
    _, ours, other, _ = files
    costs = run_costs(ours / "predictions.json")
    assert costs.trainable == 34 and costs.train_s == 25.0 and costs.step_s == 3.0 and costs.peak_mb == 950.0
    assert run_costs(other / "predictions.json") is None  # zero-shot: no adapter, no training run


def test_the_table_gets_cost_columns_and_mcnemar_against_one_method(files, capsys):
    """--costs adds the columns to the Markdown and the JSON rows; --mcnemar-against compares every other row with
    that one only (not every pair)."""
    problems, ours, other, third = files
    result = build_table(TableConfig(predictions=[str(ours), str(other), str(third)], problems=str(problems),
                                     costs=True, mcnemar_against="ours", json="-"))
    header = result.markdown.splitlines()[0]
    assert header.endswith("| trainable | train min | s/step | peak MB | adapter MB |")
    assert "| 34 | 0.4 | 3.00 | 950 |" in result.markdown
    assert [(t.a, t.b) for t in result.tests] == [("ours", "other"), ("ours", "third")]
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert rows[0]["costs"] == {"trainable": 34, "train_s": 25.0, "step_s": 3.0, "peak_mb": 950.0,
                                "adapter_mb": rows[0]["costs"]["adapter_mb"]}  # numbers, not the table's cells
    assert "costs" not in rows[1]


def test_the_cost_plot_draws_each_row_with_costs_at_its_trainable_count(files, tmp_path, monkeypatch):
    """--cost-plot: one point per row whose training run is known (x: trainable parameters, y: Avg); rows without
    costs are left out. With --out and --costs it is OUT/costs.png."""
    problems, ours, other, _ = files
    drawn = []
    def drawing(*args, **kwargs):
        png, points = cost_plot_png(*args, **kwargs)
        drawn.append(points)
        return png, points

    monkeypatch.setattr("mm_adapter.eval.table.cost_plot_png", drawing)
    build_table(TableConfig(predictions=[str(ours), str(other)], problems=str(problems), costs=True,
                            cost_plot=str(tmp_path / "costs.png"), markdown=str(tmp_path / "t.md")))
    assert drawn == [[("ours", 34, 100.0)]]
    assert (tmp_path / "costs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = build_table(TableConfig(predictions=[str(ours), str(other)], problems=str(problems), costs=True,
                                     out=str(tmp_path / "table")))
    assert tmp_path / "table" / "costs.png" in result.written and len(drawn) == 2


@pytest.mark.parametrize(("flags", "message"), [
    (["--cost-plot", "c.png"], "--cost-plot: plots the --costs columns; add --costs"),
    (["--costs", "--cost-plot", "-"], "--cost-plot needs a file name, not '-'"),
])
def test_a_cost_plot_without_costs_or_to_stdout_is_one_line(files, tmp_path, capsys, monkeypatch, flags, message):
    problems, ours, _, _ = files
    monkeypatch.chdir(tmp_path)
    code = main(["table", str(ours), "--problems", str(problems), *flags])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err
    assert not (tmp_path / "c.png").exists()


def test_mcnemar_against_an_unknown_method_is_one_line(files, capsys):
    """A name that is no row's: one line naming the rows there are, exit 2."""
    problems, ours, other, _ = files
    code = main(["table", str(ours), str(other), "--problems", str(problems), "--mcnemar-against", "nobody"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no row has that name (rows: ours, other)" in err


def test_methods_sized_alike_are_drawn_apart_and_others_where_they_are():
    """Four methods of ~173K parameters would hide each other's error bars on a log axis: each is moved right a
    step; a 4.9M one is drawn at its count."""
    from mm_adapter.eval.cost_plot import _spread

    drawn = _spread([173_070, 172_830, 172_800, 4_884_480])
    assert drawn[0] == 173_070 and drawn[3] == 4_884_480
    assert len({round(x) for x in drawn[:3]}) == 3 and drawn[0] < drawn[1] < drawn[2]
