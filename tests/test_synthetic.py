"""The synthetic image set: official layout, loader validation, reproducibility, no answer leaks."""

from __future__ import annotations

import collections
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from mm_adapter.cli import main
from mm_adapter.errors import ScienceQAError
from mm_adapter.scienceqa.data import read_official
from mm_adapter.scienceqa.synthetic import CANDIDATES, IMAGE_FAMILIES, TEXT_FAMILIES, generate, make_problem

SIZES = {"train": 120, "val": 30, "test": 50}


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic") / "sqa"
    start = time.perf_counter()
    generate(out, SIZES, seed=3)
    return out, time.perf_counter() - start


def test_official_layout_round_trips_through_the_loader(generated):
    """The generated set is in the official layout: it loads split by split with every image present, in seconds, and
    fills every table column (subjects, TXT/IMG/NO, both grade bands)."""
    out, seconds = generated
    assert seconds < 20  # hundreds of 224x224 pictures in seconds
    splits = json.loads((out / "pid_splits.json").read_text())
    assert {k: len(v) for k, v in splits.items()} == SIZES
    every = []
    for split, count in SIZES.items():
        problems, summary = read_official(out, split, check_images=True)
        assert summary.loaded == count and summary.missing == 0 and summary.missing_images == 0
        assert all(p.split == split for p in problems)
        every += problems
    assert len({p.pid for p in every}) == sum(SIZES.values())
    with_image = [p for p in every if p.has_image]
    image = Image.open(out / "images" / with_image[0].split / with_image[0].pid / "image.png")
    assert image.size == (224, 224)
    # every table column has problems: subjects, TXT / IMG / NO, both grade bands
    assert {p.subject for p in every} == {"natural science", "social science", "language science"}
    assert any(p.has_context for p in every) and with_image and any(p.no_context for p in every)
    grades = {int(p.grade.removeprefix("grade")) for p in every}
    assert min(grades) <= 6 and max(grades) >= 7
    assert all(p.topic and p.category and p.skill and p.task for p in every)
    assert any(p.has_image and p.hint for p in every) and any(p.lecture for p in every) and all(p.solution for p in every)


def test_answer_is_not_in_the_text_of_image_problems():
    """Image problems' answers are only in the picture, never in the question or hint; text families behave as their
    column says (TXT: in the hint, NO: nowhere)."""
    rng = random.Random(0)
    for family in IMAGE_FAMILIES:
        for _ in range(50):
            record, image = make_problem(rng, family)
            answer = record["choices"][record["answer"]]
            assert image is not None and record["image"] == "image.png"
            assert answer.lower() not in (record["question"] + " " + record["hint"]).lower(), (family, record)
    for _ in range(20):  # TXT: the hint gives it away (that is the point); NO: neither hint nor image
        record, image = make_problem(rng, "hint_color")
        assert image is None and record["choices"][record["answer"]] in record["hint"]
        record, image = make_problem(rng, "guide_words")
        assert image is None and record["hint"] == ""


def test_answer_position_is_uniform():
    """The correct option's position is uniform over the choices (no position bias to learn)."""
    rng = random.Random(1)
    counts = collections.Counter()
    for _ in range(900):
        record, _ = make_problem(rng, "solution_color")  # three choices
        counts[record["answer"]] += 1
    assert set(counts) == {0, 1, 2} and all(250 <= n <= 350 for n in counts.values()), counts


def test_same_seed_same_files_other_seed_differs(generated, tmp_path):
    """The same seed writes byte-identical files; another seed writes other problems."""
    out, _ = generated
    again = generate(tmp_path / "again", SIZES, seed=3)
    assert (again / "problems.json").read_bytes() == (out / "problems.json").read_bytes()
    pngs = sorted(p.relative_to(out) for p in out.rglob("*.png"))
    assert pngs == sorted(p.relative_to(again) for p in again.rglob("*.png"))
    assert all((out / p).read_bytes() == (again / p).read_bytes() for p in pngs)
    other = generate(tmp_path / "other", SIZES, seed=4)
    assert (other / "problems.json").read_bytes() != (out / "problems.json").read_bytes()


def test_pictures_differ_within_a_family():
    """Jitter: a family is not a handful of identical pictures that a probe could memorise."""
    for family in CANDIDATES:
        rng = random.Random(2)
        pictures = {CANDIDATES[family](rng).image.tobytes() for _ in range(30)}
        assert len(pictures) == 30, family


def test_cli_refuses_a_non_empty_folder_unless_overwrite(tmp_path, capsys):
    """The generator refuses a non-empty folder in one line (nothing written) unless --overwrite; a file as the target
    is refused."""
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    assert main(["data", "synthetic-images", str(target), "--n-train", "3", "--n-val", "1", "--n-test", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not empty" in err and "--overwrite" in err
    assert not (target / "problems.json").exists()
    assert main(["data", "synthetic-images", str(target), "--n-train", "3", "--n-val", "1", "--n-test", "1",
                 "--overwrite", "--seed", "9"]) == 0
    problems, _ = read_official(target, "train")
    assert len(problems) == 3
    with pytest.raises(ScienceQAError, match="not a folder"):
        generate(target / "keep.txt", SIZES)
    assert set(TEXT_FAMILIES) == {"hint_color", "guide_words"}


def test_probe_script_reads_colour_but_not_noise(capsys):
    """The probe benchmark (bench/probe_synthetic.py) end to end on the tiny encoder: colour is readable, the verdict
    is printed; the probe itself is honest (random labels stay near chance)."""
    from bench import probe_synthetic as probe

    assert probe.main(["--clip-model", "mm-tiny-vit", "--layers", "2", "--n", "80",
                       "--families", "solution_color"]) == 0
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("solution_color")][0]
    classes, baseline, accuracy = row.split()[1:4]
    assert int(classes) == 6 and float(accuracy) >= 0.8 > float(baseline) and "readable" in row
    import numpy as np

    rng = np.random.default_rng(0)  # the probe itself is honest: random labels stay near chance
    noise_accuracy, noise_baseline = probe.probe(rng.normal(size=(200, 32)), list(rng.choice(["a", "b"], 200)), 0)
    assert noise_accuracy < 0.7


def test_the_probe_runs_as_a_benchmark_module():
    """``python -m bench.probe_synthetic`` (the documented benchmark; bench/ is not installed, so from the
    repository) reaches the probe in a real process."""
    done = subprocess.run([sys.executable, "-m", "bench.probe_synthetic", "--help"], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    assert "linear probe" in done.stdout and "--clip-model" in done.stdout and "--families" in done.stdout
