"""Loaders: the official layout, the Hugging Face parquet layout, validation and null counts."""

import io
import json
from pathlib import Path

import pytest

from mm_adapter.errors import ScienceQAError
from mm_adapter.scienceqa.data import Problem, image_path, load_official, null_counts, read_official, read_problems


def record(**overrides) -> dict:
    base = {
        "question": "Which is a mammal?", "choices": ["cat", "trout"], "answer": 0, "hint": "", "image": None,
        "task": "closed choice", "grade": "grade3", "subject": "natural science", "topic": "biology",
        "category": "Classification", "skill": "Identify mammals", "lecture": "", "solution": "", "split": "test",
    }
    return {**base, **overrides}


def write_official(root: Path, problems: dict, splits: dict, captions: dict | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "problems.json").write_text(json.dumps(problems))
    (root / "pid_splits.json").write_text(json.dumps(splits))
    if captions is not None:
        (root / "captions.json").write_text(json.dumps({"captions": captions}))
    return root


@pytest.fixture
def official(tmp_path: Path) -> Path:
    problems = {
        "7": record(hint="A passage."),
        "3": record(image="image.png", subject=None, grade=None),
        "5": record(split="train"),
    }
    splits = {"test": ["3", "7", "99"], "train": ["5"]}
    root = write_official(tmp_path / "sqa", problems, splits, captions={"3": "A cat on a mat."})
    (root / "images" / "test" / "3").mkdir(parents=True)
    (root / "images" / "test" / "3" / "image.png").write_bytes(b"\x89PNG")
    return root


def test_split_order_follows_pid_splits_and_absent_pids_are_counted(official):
    """A partial copy (pid 99 listed but absent) loads, in split order, and reports the gap."""
    problems, summary = read_official(official, "test", check_images=True)
    assert [p.pid for p in problems] == ["3", "7"]
    assert (summary.requested, summary.loaded, summary.missing_pids) == (3, 2, ("99",))
    assert summary.captions == 1 and summary.missing_images == 0
    assert "1 listed in pid_splits.json but absent" in str(summary)


def test_all_problems_without_split_and_captions_optional(official):
    problems = load_official(official, captions=False)
    assert [p.pid for p in problems] == ["7", "3", "5"]
    assert all(p.caption is None for p in problems)


def test_problem_properties_follow_official_definitions(official):
    """TXT = non-empty hint, IMG = image present, NO = neither: what the table columns use."""
    by_pid = {p.pid: p for p in load_official(official)}
    assert by_pid["7"].has_context and not by_pid["7"].has_image and not by_pid["7"].no_context
    assert by_pid["3"].has_image and by_pid["3"].caption == "A cat on a mat."
    assert by_pid["5"].no_context and by_pid["5"].split == "train"
    assert by_pid["7"].answer_text == "cat"


def test_image_path_resolves_and_checks(official):
    p3, p7 = (p for p in load_official(official, "test"))
    assert image_path(p3, official, must_exist=True) == official / "images" / "test" / "3" / "image.png"
    assert image_path(p7, official) is None
    (official / "images" / "test" / "3" / "image.png").unlink()
    with pytest.raises(ScienceQAError, match="pid 3"):
        image_path(p3, official, must_exist=True)
    assert read_official(official, "test", check_images=True)[1].missing_images == 1


def test_null_counts_per_metadata_field(official):
    counts = null_counts(load_official(official))
    assert counts["subject"] == 1 and counts["grade"] == 1 and counts["skill"] == 0


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"choices": "cat, trout"}, "choices"),
        ({"choices": ["cat", 3]}, "choices"),
        ({"choices": ["cat"]}, "choices"),
        ({"answer": 2}, "answer"),
        ({"answer": "0"}, "answer"),
        ({"answer": True}, "answer"),
        ({"question": ""}, "question"),
        ({"question": None}, "question"),
        ({"hint": 5}, "hint"),
        ({"grade": 3}, "grade"),
    ],
)
def test_malformed_record_names_file_pid_and_field(tmp_path, bad, field):
    """A bad record fails with one line naming where to look, for the CLI to print."""
    write_official(tmp_path, {"12": record(**bad)}, {"test": ["12"]})
    with pytest.raises(ScienceQAError) as info:
        read_problems(tmp_path / "problems.json")
    message = str(info.value)
    assert "problems.json" in message and "pid 12" in message and f"field '{field}'" in message
    assert "\n" not in message


@pytest.mark.parametrize("content", ["[1, 2]", '{"1": [1]}', "{not json"])
def test_problems_file_must_be_dict_of_dicts(tmp_path, content):
    (tmp_path / "problems.json").write_text(content)
    with pytest.raises(ScienceQAError, match="problems.json"):
        read_problems(tmp_path)


def test_unknown_split_is_an_error(official):
    with pytest.raises(ScienceQAError, match="no split 'dev'"):
        read_official(official, "dev")


def png_bytes(color: str) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (4, 3), color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_hf_parquet_round_trip_keeps_image_bytes(tmp_path):
    """The HF layout (no pids, embedded images) loads with stable pids and usable image bytes."""
    datasets = pytest.importorskip("datasets")
    from mm_adapter.scienceqa.hf import load_hf

    rows = {
        "image": [{"bytes": png_bytes("red"), "path": None}, None],
        "question": ["What color is it?", "Which word is a noun?"],
        "choices": [["red", "blue"], ["run", "dog", "quick"]],
        "answer": [0, 1],
        "hint": ["", "Look at the words."],
        "task": ["closed choice"] * 2, "grade": ["grade1", "grade9"],
        "subject": ["natural science", "language science"], "topic": ["colors", "grammar"],
        "category": ["Colors", "Nouns"], "skill": ["Identify colors", "Identify nouns"],
        "lecture": ["Colors are...", ""], "solution": ["It is red.", ""],
    }
    features = datasets.Features({
        "image": datasets.Image(), "question": datasets.Value("string"),
        "choices": datasets.Sequence(datasets.Value("string")), "answer": datasets.Value("int64"),
        **{k: datasets.Value("string") for k in rows if k not in ("image", "question", "choices", "answer")},
    })
    folder = tmp_path / "data"
    folder.mkdir()
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(folder / "validation-00000-of-00001.parquet"))

    problems = load_hf(folder, "val", cache_dir=str(tmp_path / "cache"))
    assert [p.pid for p in problems] == ["val-0", "val-1"]
    first, second = problems
    assert first.has_image and first.image_bytes == rows["image"][0]["bytes"]
    from PIL import Image

    assert Image.open(io.BytesIO(first.image_bytes)).size == (4, 3)
    assert not second.has_image and second.has_context
    assert second.choices == ("run", "dog", "quick") and second.answer == 1 and second.split == "val"
    assert isinstance(second, Problem) and second.grade == "grade9"
    # A single file path works too, with the same pids.
    single = load_hf(folder / "validation-00000-of-00001.parquet", "val", cache_dir=str(tmp_path / "cache"))
    assert [p.pid for p in single] == ["val-0", "val-1"]


def test_hf_missing_split_files_is_an_error(tmp_path):
    from mm_adapter.scienceqa.hf import load_hf

    with pytest.raises(ScienceQAError, match="test-\\*.parquet"):
        load_hf(tmp_path, "test")


def test_real_data_loads_with_the_documented_gaps(shared_data):
    """The real copy: all 4,241 test problems, partial train, metadata nulls as documented."""
    root = shared_data / "scienceqa"
    test, summary = read_official(root, "test")
    assert (summary.loaded, summary.missing) == (4241, 0)
    assert summary.captions == sum(p.has_image for p in test) == 2017
    counts = null_counts(test)
    assert counts["subject"] == 4241 - 2427 and counts["grade"] == 4241 - 629
    _, train = read_official(root, "train")
    assert (train.requested, train.loaded) == (12726, 1554)
