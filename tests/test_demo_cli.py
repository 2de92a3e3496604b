"""``mm-adapter demo``: the answer and one line per option's probability; every bad input is one line, exit 2.

One run is a real subprocess (the documented ``mm-adapter demo``; it pays a fresh interpreter and torch
import, ~10 s of CPU); the job function and bad inputs go through ``mm_adapter.cli.main`` in this process, with
stderr captured at the file-descriptor level so any stray warning would show up as a second line.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import torch
from entry_point import MM_ADAPTER
from PIL import Image
from test_demo_predictor import (
    CHOICES, QUESTION, DemoFiles, adapted_model, make_demo_files, noise_png, png, save_visual_adapter,
)
from test_eval_run import single_thread  # noqa: F401 (autouse fixture)

from mm_adapter import MMAdapterError
from mm_adapter.cli import main
from mm_adapter.cli.reports import format_prediction
from mm_adapter.demo.predictor import Predictor
from mm_adapter.encoders.clip import TINY_VIT, VisualConfig
from mm_adapter.jobs.configs.answering import DemoConfig
from mm_adapter.jobs.demo import demo
from mm_adapter.model.config import ModelOptions

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> DemoFiles:
    return make_demo_files(tmp_path_factory.mktemp("cli"))


def arguments(files: DemoFiles, image: Path | None, adapter: Path | None) -> list[str]:
    args = ["--base", str(files.base), "--question", QUESTION, "--choices", *CHOICES]
    args += ["--adapter", str(adapter)] if adapter is not None else []
    return args + (["--image", str(image)] if image is not None else [])


def in_process(argv: list[str], capfd) -> tuple[int, str, str]:
    """``mm-adapter demo ARGV`` in this process: (exit code, stdout, stderr)."""
    capfd.readouterr()
    code = main(["demo", *argv])
    out, err = capfd.readouterr()
    return code, out, err


def test_prints_the_answer_and_each_probability(files, tmp_path):
    """The documented ``mm-adapter demo`` prints the answer line and one line per option (percent summing to
    100, '*' on the most probable), the same numbers as the predictor in this process; stderr says what answered."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [MM_ADAPTER, "demo", *arguments(files, files.red, files.visual)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1 + len(CHOICES) and lines[0].startswith("Answer: (")
    percents = [float(re.search(r"(\d+\.\d)%", line).group(1)) for line in lines[1:]]
    assert abs(sum(percents) - 100) < 0.2
    chosen = [i for i, line in enumerate(lines[1:]) if line.startswith("*")]
    assert chosen == [percents.index(max(percents))]
    assert lines[0] == f"Answer: ({'ABC'[chosen[0]]}) {CHOICES[chosen[0]]}"
    expected = Predictor.load(str(files.base), files.visual).predict(files.red, QUESTION, CHOICES)
    assert done.stdout == format_prediction(expected) + "\n"  # the same numbers as the predictor here
    assert "image encoder mm-tiny-vit (random weights)" in done.stderr


def test_the_job_answers_as_the_predictor_and_refuses_bad_input_before_loading(files, monkeypatch):
    """``demo(DemoConfig)`` returns the predictor's Prediction for the question, choices, context and image; a bad
    question or image is refused before any model is loaded."""
    config = DemoConfig(question=QUESTION, choices=list(CHOICES), image=str(files.red), adapter=str(files.visual),
                        context="The particles are green.", model=ModelOptions(base=str(files.base), device="cpu"))
    prediction = demo(config)
    expected = Predictor.load(str(files.base), files.visual).predict(files.red, QUESTION, CHOICES,
                                                                      "The particles are green.")
    assert prediction == expected and prediction.image_used
    monkeypatch.setattr(Predictor, "load", lambda *a, **k: pytest.fail("loaded a model for bad input"))
    with pytest.raises(MMAdapterError, match="need at least 2 choices"):
        demo(DemoConfig(question=QUESTION, choices=["only"], model=ModelOptions(base=str(files.base))))
    with pytest.raises(MMAdapterError, match="no such image file"):
        demo(DemoConfig(question=QUESTION, choices=list(CHOICES), image=str(files.red) + ".missing",
                        model=ModelOptions(base=str(files.base))))


def test_a_file_that_is_not_an_image_is_exactly_one_line(files, tmp_path, capfd):
    """A file that is not an image: exit 2, nothing on stdout, exactly one line naming the file."""
    notes = tmp_path / "notes.png"
    notes.write_text("not an image at all\n")
    code, out, err = in_process(arguments(files, notes, files.visual), capfd)
    assert (code, out) == (2, "")
    assert err == f"error: {notes}: not an image (PIL cannot identify the file format)\n"


def test_without_a_visual_adapter_the_output_says_the_image_was_ignored(files, capfd):
    """With a text-only adapter, or none, the printed answer ends with a note that the image was ignored."""
    code, out, _ = in_process(arguments(files, files.noise, files.text_only), capfd)
    assert code == 0 and out.splitlines()[-1] == (
        "Note: image ignored: adapter text has no visual parts (a text-only adapter)")
    code, out, _ = in_process(arguments(files, files.noise, None), capfd)
    assert code == 0 and "Note: image ignored: no adapter loaded" in out


@pytest.fixture(scope="module")
def bad_inputs(files, tmp_path_factory) -> dict[str, tuple[list[str], str]]:
    folder = tmp_path_factory.mktemp("bad")
    truncated, huge = folder / "truncated.png", folder / "huge.png"
    truncated.write_bytes(noise_png()[:500])
    huge.write_bytes(png("white", (100, 100)))
    model = adapted_model(folder / "base")
    other = folder / "b32.pt"  # a checkpoint of a wider encoder than the one the adapter names
    torch.save({"state_dict": {"visual.conv1.weight": torch.zeros(768, 3, 32, 32)}}, other)
    unknown = save_visual_adapter(model, folder / "unknown.safetensors",
                                  VisualConfig(clip_model="ViT-Z-99", clip_layers=2))
    foreign = save_visual_adapter(model, folder / "foreign.safetensors",
                                  VisualConfig(clip_model=TINY_VIT, clip_layers=2, clip_pretrained=str(other)))
    return {
        "truncated": (arguments(files, truncated, files.visual), f"{truncated}: damaged or truncated image"),
        "huge": (arguments(files, huge, files.visual), f"{huge}: image too large (10000 pixels"),
        "missing": (arguments(files, folder / "nope.png", files.visual), "nope.png: no such image file"),
        "folder": (arguments(files, folder, files.visual), f"{folder}: is a folder"),
        "one choice": (["--base", str(files.base), "--question", "Q?", "--choices", "only"],
                       "need at least 2 choices, got 1"),
        "no question": (["--choices", "a", "b"], "the following arguments are required: --question"),
        "unknown encoder": (arguments(files, files.red, unknown), "unknown CLIP model 'ViT-Z-99'"),
        "another encoder's checkpoint": (arguments(files, files.red, foreign),
                                         "does not fit CLIP model mm-tiny-vit"),
        "bad adapter file": (arguments(files, files.red, files.red), "not a readable safetensors file"),
    }


@pytest.mark.parametrize("case", ["truncated", "huge", "missing", "folder", "one choice", "no question",
                                  "unknown encoder", "another encoder's checkpoint", "bad adapter file"])
def test_bad_input_is_one_line_and_exit_2(bad_inputs, capfd, monkeypatch, case):
    """Every bad input (image, question, choices, adapter, encoder): exit 2, nothing on stdout, one "error:" line."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)
    argv, message = bad_inputs[case]
    code, out, err = in_process(argv, capfd)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
