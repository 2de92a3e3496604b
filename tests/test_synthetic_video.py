"""The generated video set: official layout with clips as media, answers that need the frames' order (every
option's colour is in the clip; the flashes are counted only in order), and every phase seen by 8 sampled frames."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from mm_adapter.cli import main
from mm_adapter.encoders.video import clip_frames, count_frames, is_clip, sample_indices
from mm_adapter.scienceqa.data import image_path, read_official
from mm_adapter.scienceqa.synthetic import generate
from mm_adapter.scienceqa.synthetic_video import (
    CANDIDATES, CLIP_NAME, PHASE_FRAMES, TEMPORAL, VIDEO_FAMILIES, clip_bytes, colour_first, draw_clip_problem,
    flash_count,
)

SEEDS = range(40)


def runs(labels: list[str]) -> list[str]:
    """The phases of a clip: its labels with repeats merged."""
    return [label for label, _ in itertools.groupby(labels)]


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("video") / "sqa"
    return generate(out, {"train": 24, "val": 6, "test": 10}, seed=1, draw=draw_clip_problem)


def test_official_layout_with_a_clip_per_media_problem(generated):
    """The set loads through the official loader; every media problem names clip.gif, an animated GIF (a clip, not
    a still) that decodes to every frame drawn; text-only problems fill the TXT/NO columns."""
    problems = [p for split in ("train", "val", "test") for p in read_official(generated, split)[0]]
    assert len(problems) == 40
    records = json.loads((generated / "problems.json").read_text())
    with_media = [p for p in problems if p.has_image]
    assert with_media and len(with_media) < len(problems)
    for problem in with_media:
        assert problem.image == CLIP_NAME and records[problem.pid]["family"] in VIDEO_FAMILIES
        data = image_path(problem, generated).read_bytes()
        assert is_clip(data) and count_frames(data, problem.pid) >= 3 * PHASE_FRAMES[0]


def test_frames_come_back_as_drawn():
    """A drawn clip's GIF decodes to its frames pixel for pixel (the generator's palette survives the GIF)."""
    clip = colour_first(random.Random(0))
    frames = clip_frames(clip_bytes(clip.frames), "clip", len(clip.frames))
    assert [f.tobytes() for f in frames] == [f.convert("RGB").tobytes() for f in clip.frames]


@pytest.mark.parametrize("family", ["colour_first", "colour_last"])
def test_every_option_colour_is_in_the_clip_so_only_order_tells(family):
    """For the colour questions all four options are shown in the clip, the answer first (or last) of them: the
    frames without their order say nothing about the answer."""
    for seed in SEEDS:
        clip = CANDIDATES[family](random.Random(seed))
        phases = runs(clip.labels)
        assert sorted(phases) == sorted(clip.drawn.choices) and len(phases) == 4
        assert clip.drawn.choices[0] == (phases[0] if family == "colour_first" else phases[-1])


def test_flash_count_is_the_number_of_lit_phases_and_lit_time_does_not_depend_on_it():
    """The answer is the number of lit phases; the lit and dark frame totals stay in the same range whatever the
    count, so a bag of frames cannot count."""
    words = {"once": 1, "twice": 2, "three times": 3}
    totals = {1: set(), 2: set(), 3: set()}
    for seed in range(120):
        clip = flash_count(random.Random(seed))
        flashes = runs(clip.labels).count("on")
        assert words[clip.drawn.choices[0]] == flashes
        totals[flashes].add(clip.labels.count("on"))
    assert all(min(found) >= 18 and max(found) <= 24 for found in totals.values()), totals


@pytest.mark.parametrize("family", sorted(TEMPORAL))
def test_eight_uniform_frames_see_what_the_answer_needs(family):
    """8 uniformly sampled frames (the recipe's --frames) see the answer: every colour phase in order (phases last
    at least PHASE_FRAMES[0] frames), and every flash with a dark gap between flashes (a short dark lead-in or
    tail may fall between samples; it changes no count)."""
    for seed in range(200):
        labels = CANDIDATES[family](random.Random(seed)).labels
        seen = runs([labels[i] for i in sample_indices(len(labels), 8)])
        if family == "flash_count":
            assert seen.count("on") == runs(labels).count("on"), (seed, runs(labels), seen)
        else:
            assert seen == runs(labels), (seed, runs(labels), seen)


def test_the_command_writes_the_set(tmp_path, capsys):
    """``mm-adapter data synthetic-video OUT`` writes the official layout with clips (its own description in --help)."""
    assert main(["data", "synthetic-video", str(tmp_path / "set"), "--n-train", "4", "--n-val", "2", "--n-test", "2"]) == 0
    assert json.loads((tmp_path / "set" / "pid_splits.json").read_text()).keys() == {"train", "val", "test"}
    assert list((tmp_path / "set" / "images").rglob("clip.gif"))
    assert main(["--help"]) == 0
    assert "clip set whose answers need the order of the frames" in " ".join(capsys.readouterr().out.split())