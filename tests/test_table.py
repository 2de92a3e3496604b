"""The table job (``build_table``, ``mm-adapter table``, in a real process): reproduces
published numbers, writes every output, fails in one line.

Outputs always go to tmp_path: nothing here writes next to the real data.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mm_adapter.cli import main
from mm_adapter.eval.config import TableConfig
from mm_adapter.eval.table import build_table
from mm_adapter.scienceqa.data import read_problems
from mm_adapter.scienceqa.metrics import COLUMN_NAMES, score
from mm_adapter.scienceqa.predictions import load_predictions
from entry_point import MM_ADAPTER

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = {  # TXT, IMG, NO, Avg of the published tables
    "gpt3_cot_test.json": ("GPT-3 CoT", (74.68, 67.43, 79.93, 75.17)),
    "llava_13b_test.json": ("LLaVA", (89.49, 88.00, 90.66, 90.92)),
}


def check_published(rows: list[dict]) -> None:
    for row, (method, expected) in zip(rows, PUBLISHED.values()):
        assert row["method"] == method
        assert tuple(row[c] for c in ("TXT", "IMG", "NO", "Avg")) == expected
        assert row["n"]["Avg"] == 4241 and row["n"]["TXT"] + row["n"]["NO"] <= 4241
        assert row["n"]["NAT"] + row["n"]["SOC"] + row["n"]["LAN"] == 2427  # subject known
        assert row["unknown"]["G1-6"] == 4241 - 629  # grade known for 629: said, not hidden


def test_real_predictions_reproduce_published_table(shared_data):
    """Scoring the published per-question predictions gives exactly the published TXT/IMG/NO/Avg."""
    root = shared_data / "scienceqa"
    problems = read_problems(root / "problems.json")
    rows = []
    for name in PUBLISHED:
        s = score(load_predictions(root / "external" / name), problems)
        rows.append({"method": s.name, **{c: s[c].acc for c in COLUMN_NAMES},
                     "n": {c: s[c].n for c in COLUMN_NAMES}, "unknown": {c: s[c].unknown for c in COLUMN_NAMES}})
        assert not s.missing
    check_published(rows)


def test_cli_json_stdout_on_real_data(shared_data):
    """The same through the documented command line (``mm-adapter table`` in a real process), as a user runs
    it; stdout is pure JSON holding every table: the rows, the McNemar tests and the reference rows."""
    root = shared_data / "scienceqa"
    cmd = [MM_ADAPTER, "table", *(str(root / "external" / n) for n in PUBLISHED),
           "--problems", str(root / "problems.json"), "--json", "-", "--mcnemar"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    check_published(document["rows"])
    assert [(t["a"], t["b"]) for t in document["mcnemar"]] == [("GPT-3 CoT", "LLaVA")]
    assert document["reference"] == {}


def write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """Four test problems (one with null subject/grade), two methods, a published reference."""
    rec = {"question": "q?", "choices": ["a", "b"], "hint": "", "image": None, "task": "closed choice",
           "topic": "t", "category": "c", "skill": "s", "lecture": "", "solution": "", "split": "test"}
    problems = {
        "1": {**rec, "answer": 0, "hint": "h", "subject": "natural science", "grade": "grade3"},
        "2": {**rec, "answer": 1, "image": "image.png", "subject": "social science", "grade": "grade8"},
        "3": {**rec, "answer": 0, "subject": "language science", "grade": "grade1"},
        "4": {**rec, "answer": 1, "subject": None, "grade": None},
    }
    return {
        "problems": write(tmp_path / "problems.json", problems),
        "a": write(tmp_path / "a.json", {"method": "Mine", "results": {"1": 0, "2": 1, "3": 1, "4": -1}}),
        "b": write(tmp_path / "run_b.json", {"results": {"1": 0, "2": 0, "3": 0, "4": 1}}),
        "reference": write(tmp_path / "published.json", {"Mine": {"Avg": 60.0}, "Other": {"IMG": 71.6}}),
    }


def run(capsys, *args) -> tuple[int, str, str]:
    """``mm-adapter table ARGS`` in this process: (exit code, stdout, stderr)."""
    code = main(["table", *(str(a) for a in args)])
    out, err = capsys.readouterr()
    return code, out, err


def table(files, **settings) -> TableConfig:
    return TableConfig(**{"predictions": [str(files["a"]), str(files["b"])], "problems": str(files["problems"]),
                          "reference": str(files["reference"]), **settings})


def test_markdown_default_with_reference_intervals_and_mcnemar(files, capsys):
    """The Markdown table (stdout by default, and returned): n row under each computed row, published rows next to
    theirs, missing cells as '–', null metadata flagged with its n, bootstrap intervals, McNemar tests, -1 noted."""
    result = build_table(table(files, bootstrap=200, mcnemar=True))
    out = capsys.readouterr().out
    assert out == result.markdown and result.written == []
    assert [s.name for s in result.scores] == ["Mine", "run_b"] and len(result.tests) == 1
    lines = out.splitlines()
    mine = lines.index(next(l for l in lines if l.startswith("| **Mine**")))
    assert lines[mine + 1].startswith("| ↳ n |") and lines[mine + 2].startswith("| Mine (published, test) |")
    assert "| **run_b** |" in out and "| Other (published, test) | – |" in out  # stem as name, missing cells
    assert "†" in out and "subject known for 3 of 4" in out  # null metadata is flagged with its n
    assert "[" in lines[mine] and "bootstrap" in out
    assert "| Mine | run_b | 4 |" in out and "exact binomial" in out
    assert "-1 (no answer)" in out


def test_json_csv_plot_files(files, tmp_path, capsys):
    """--json/--csv/--plot write their files (the JSON holds every table printed: rows with n, unknown and
    intervals, the McNemar tests, the reference); the Markdown table still goes to stdout."""
    outs = {k: tmp_path / f"out.{k}" for k in ("json", "csv", "png")}
    result = build_table(table(files, json=str(outs["json"]), csv=str(outs["csv"]), plot=str(outs["png"]),
                               bootstrap=100, mcnemar=True))
    out = capsys.readouterr().out
    assert sorted(result.written) == sorted(outs.values())
    document = json.loads(outs["json"].read_text())
    assert document["reference"] == {"Mine": {"Avg": 60.0}, "Other": {"IMG": 71.6}}
    assert [(t["a"], t["b"], t["n"]) for t in document["mcnemar"]] == [("Mine", "run_b", 4)]
    rows = document["rows"]
    assert [r["method"] for r in rows] == ["Mine", "run_b"]
    assert rows[0]["Avg"] == 50.0 and rows[0]["n"]["NAT"] == 1 and rows[0]["unknown"]["NAT"] == 1
    assert rows[1]["Avg"] == 75.0 and rows[1]["G7-12"] == 0.0 and len(rows[1]["ci"]["Avg"]) == 2
    csv_lines = outs["csv"].read_text().splitlines()
    assert csv_lines[0].startswith("method,kind,NAT") and csv_lines[2].startswith("Mine,published")
    assert outs["png"].read_bytes()[:4] == b"\x89PNG"
    assert out.startswith("| Method |")  # markdown still on stdout: nothing else claimed it


def test_plot_draws_error_bars_only_when_intervals_were_computed(files, tmp_path, monkeypatch):
    """Without bootstrap the chart has no error bars (no zero-height whiskers pretending to be intervals); with it
    the computed rows get them and published rows never do; the title names the data set."""
    from matplotlib.axes import Axes

    bars, titles = [], []
    real_bar, real_title = Axes.bar, Axes.set_title
    monkeypatch.setattr(Axes, "bar", lambda self, *a, **k: bars.append((k["label"], k.get("yerr"))) or
                        real_bar(self, *a, **k))
    monkeypatch.setattr(Axes, "set_title", lambda self, text, *a, **k: titles.append(text) or
                        real_title(self, text, *a, **k))
    build_table(table(files, plot=str(tmp_path / "plain.png"), markdown=str(tmp_path / "plain.md"), bootstrap=0))
    assert [label for label, _ in bars] == ["Mine", "Mine (published, test)", "run_b"]
    assert all(yerr is None for _, yerr in bars) and titles == ["ScienceQA"]
    bars.clear()
    build_table(table(files, plot=str(tmp_path / "ci.png"), markdown=str(tmp_path / "ci.md"), bootstrap=50,
                      title="ScienceQA (generated)"))
    errors = {label: yerr for label, yerr in bars}
    assert errors["Mine (published, test)"] is None and errors["Mine"] is not None and errors["run_b"] is not None
    assert errors["run_b"].shape == (2, len(COLUMN_NAMES)) and titles[-1] == "ScienceQA (generated)"
    assert (tmp_path / "plain.png").read_bytes()[:4] == (tmp_path / "ci.png").read_bytes()[:4] == b"\x89PNG"


def test_eval_folders_as_inputs_and_an_out_folder(files, tmp_path, capsys):
    """A predictions argument may be an eval output folder (its predictions.json is read); --out writes table.md,
    .csv, .json, .png and a config.yaml that reproduces the table through --config; nothing goes to stdout."""
    folder = tmp_path / "eval-run"
    folder.mkdir()
    (folder / "predictions.json").write_text(files["a"].read_text())
    out = tmp_path / "tables"
    result = build_table(TableConfig(predictions=[str(folder), str(files["b"])], problems=str(files["problems"]),
                                     out=str(out)))
    assert capsys.readouterr().out == ""
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "table.csv", "table.json", "table.md",
                                                     "table.png"]
    assert [s.name for s in result.scores] == ["Mine", "run_b"] and (out / "table.md").read_text() == result.markdown
    assert yaml.safe_load((out / "config.yaml").read_text())["command"] == "table"
    code, stdout, err = run(capsys, "--config", out / "config.yaml", "--out", tmp_path / "again")
    assert code == 0, err
    assert (tmp_path / "again" / "table.md").read_text() == result.markdown
    assert json.loads((tmp_path / "again" / "table.json").read_text()) == json.loads((out / "table.json").read_text())


def test_json_to_stdout_is_pure_json(files, capsys):
    """``--json -``: stdout is one JSON document (the Markdown table does not go there too)."""
    code, out, _ = run(capsys, files["a"], "--problems", files["problems"], "--json", "-")
    assert code == 0 and json.loads(out)["rows"][0]["method"] == "Mine"


def test_bool_flags_before_the_positional_files_take_no_value(files, capsys):
    """A bare --mcnemar (or --no-mcnemar) in front of the predictions files is a switch, not a flag swallowing the
    first file as its value; --mcnemar false is still read as a value."""
    code, out, err = run(capsys, "--mcnemar", files["a"], files["b"], "--problems", files["problems"])
    assert code == 0 and "| Mine | run_b | 4 |" in out, err
    code, out, err = run(capsys, "--no-mcnemar", files["a"], files["b"], "--problems", files["problems"])
    assert code == 0 and "McNemar" not in out and "| **run_b** |" in out, err
    code, out, err = run(capsys, "--mcnemar", "false", files["a"], files["b"], "--problems", files["problems"])
    assert code == 0 and "McNemar" not in out, err


def test_uncovered_pids_are_noted(files, tmp_path, capsys):
    """A file covering only part of its split is scored over what it covers, and says so on stderr."""
    partial = write(tmp_path / "partial.json", {"results": {"1": 0}})
    code, out, err = run(capsys, partial, "--problems", files["problems"], "--json", "-")
    assert code == 0 and "3 pids of its split(s) not predicted" in err
    assert json.loads(out)["rows"][0]["missing"] == 3


@pytest.mark.parametrize(
    "case, message",
    [
        ("unknown_pid", "pid 99"),
        ("bad_index", "pid 1"),
        ("not_json", "not valid JSON"),
        ("missing_file", "no such file"),
        ("overwrite_input", "refusing to overwrite"),
        ("two_stdout", "only one of"),
        ("bad_reference", "unknown column"),
        ("no_args", "required"),
    ],
)
def test_bad_input_is_one_line_exit_2(files, tmp_path, capsys, case, message):
    """Every bad input: exit 2, one 'error:' line on stderr, no traceback, inputs untouched."""
    base = [files["a"], "--problems", files["problems"]]
    args = {
        "unknown_pid": [write(tmp_path / "unknown.json", {"results": {"99": 0}}), "--problems", files["problems"]],
        "bad_index": [write(tmp_path / "index.json", {"results": {"1": 2}}), "--problems", files["problems"]],
        "not_json": [tmp_path / "x.json", "--problems", files["problems"]],
        "missing_file": [tmp_path / "absent.json", "--problems", files["problems"]],
        "overwrite_input": [*base, "--json", files["problems"]],
        "two_stdout": [*base, "--json", "-", "--csv", "-"],
        "bad_reference": [*base, "--reference", write(tmp_path / "r.json", {"M": {"ALL": 1}})],
        "no_args": [],
    }[case]
    if case == "not_json":
        (tmp_path / "x.json").write_text("{oops")
    before = files["problems"].read_bytes()
    code, out, err = run(capsys, *args)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert files["problems"].read_bytes() == before


def test_cli_subprocess_error_has_no_traceback(files):
    """``mm-adapter table`` in a real process: bad input is one line naming the file, exit 2,
    no traceback."""
    done = subprocess.run([MM_ADAPTER, "table", str(files["a"]), "--problems", str(files["a"])],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: ") and "a.json" in done.stderr
