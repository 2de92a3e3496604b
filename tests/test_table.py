"""`python -m eval.table`: reproduces published numbers, writes every output, fails in one line.

Outputs always go to tmp_path: nothing here writes next to the real data.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from eval.table import main
from scienceqa.data import read_problems
from scienceqa.metrics import COLUMN_NAMES, score
from scienceqa.predictions import load_predictions

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
    """The same through the command line, as a user runs it; stdout is pure JSON."""
    root = shared_data / "scienceqa"
    cmd = [sys.executable, "-m", "eval.table", *(str(root / "external" / n) for n in PUBLISHED),
           "--problems", str(root / "problems.json"), "--json", "-"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    check_published(json.loads(done.stdout))


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
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_markdown_default_with_reference_intervals_and_mcnemar(files, capsys):
    code, out, err = run(capsys, files["a"], files["b"], "--problems", files["problems"],
                         "--reference", files["reference"], "--bootstrap", 200, "--mcnemar")
    assert code == 0, err
    lines = out.splitlines()
    mine = lines.index(next(l for l in lines if l.startswith("| **Mine**")))
    assert lines[mine + 1].startswith("| ↳ n |") and lines[mine + 2].startswith("| Mine (published) |")
    assert "| **run_b** |" in out and "| Other (published) | – |" in out  # stem as name, missing cells
    assert "†" in out and "subject known for 3 of 4" in out  # null metadata is flagged with its n
    assert "[" in lines[mine] and "bootstrap" in out
    assert "| Mine | run_b | 4 |" in out and "exact binomial" in out
    assert "-1 (no answer)" in out


def test_json_csv_plot_files(files, tmp_path, capsys):
    outs = {k: tmp_path / f"out.{k}" for k in ("json", "csv", "png")}
    code, out, err = run(capsys, files["a"], files["b"], "--problems", files["problems"], "--reference",
                         files["reference"], "--json", outs["json"], "--csv", outs["csv"], "--plot", outs["png"],
                         "--bootstrap", 100)
    assert code == 0, err
    rows = json.loads(outs["json"].read_text())
    assert [r["method"] for r in rows] == ["Mine", "run_b"]
    assert rows[0]["Avg"] == 50.0 and rows[0]["n"]["NAT"] == 1 and rows[0]["unknown"]["NAT"] == 1
    assert rows[1]["Avg"] == 75.0 and rows[1]["G7-12"] == 0.0 and len(rows[1]["ci"]["Avg"]) == 2
    csv_lines = outs["csv"].read_text().splitlines()
    assert csv_lines[0].startswith("method,kind,NAT") and csv_lines[2].startswith("Mine,published")
    assert outs["png"].read_bytes()[:4] == b"\x89PNG"
    assert out.startswith("| Method |")  # markdown still on stdout: nothing else claimed it


def test_json_to_stdout_is_pure_json(files, capsys):
    code, out, _ = run(capsys, files["a"], "--problems", files["problems"], "--json", "-")
    assert code == 0 and json.loads(out)[0]["method"] == "Mine"


def test_uncovered_pids_are_noted(files, tmp_path, capsys):
    partial = write(tmp_path / "partial.json", {"results": {"1": 0}})
    code, out, err = run(capsys, partial, "--problems", files["problems"], "--json", "-")
    assert code == 0 and "3 pids of its split(s) not predicted" in err
    assert json.loads(out)[0]["missing"] == 3


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
    done = subprocess.run([sys.executable, "-m", "eval.table", str(files["a"]), "--problems", str(files["a"])],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: ") and "a.json" in done.stderr
