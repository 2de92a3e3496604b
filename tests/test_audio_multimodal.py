"""An adapter with both an image part and an audio part, on a tiny base with a tiny random CLIP and Whisper: a question
with an image and a sound gets the sum of both offsets (the answer depends on both), and a video clip with a sound
track is heard through that track when no separate sound is given; the demo's predictor and ``eval scienceqa`` (the
data path: ``problem_audio``, ``OffsetSum``) give the same probabilities for the same problems.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from test_demo_predictor import CHOICES, QUESTION, TINY, adapted_model, noise_png, png
from test_eval_run import make_tokenizer, single_thread  # noqa: F401 (autouse fixture)
from tiny_audio import clip_with_sound, encode_audio, tiny_whisper_folder

from mm_adapter import save_adapter
from mm_adapter.cli import main
from mm_adapter.demo.predictor import Predictor
from mm_adapter.encoders.audio.adapter_part import audio_extras, audio_projection
from mm_adapter.encoders.audio.config import AudioConfig
from mm_adapter.encoders.audio.whisper import build_audio_encoder
from mm_adapter.encoders.clip import build_encoder
from mm_adapter.encoders.projection import VisualProjection, visual_extras

COLOURS = ["red", "green", "blue", "white", "black", "red"]


@dataclass(frozen=True)
class BothFiles:
    base: Path
    adapter: Path  # an image part (tiny ViT) and an audio part (tiny Whisper), projections N(0, 1) at the end


def save_both_adapter(folder: Path) -> BothFiles:
    base = folder / "base"
    make_tokenizer().save_pretrained(base)
    model = adapted_model(base)
    torch.manual_seed(3)
    encoder = build_encoder(TINY)
    projection = VisualProjection(encoder.feature_dim, 64, TINY)
    torch.nn.init.normal_(projection.proj[-1].weight)
    tensors, metadata = visual_extras(TINY, projection, encoder)
    config = AudioConfig(audio_encoder=str(tiny_whisper_folder(folder / "whisper", seed=1)), audio_layers=2)
    hearing = build_audio_encoder(config, "cpu")
    projection = audio_projection(config, hearing.feature_dim, 64)
    torch.nn.init.normal_(projection.proj[-1].weight)
    audio_tensors, audio_metadata = audio_extras(config, projection, hearing)
    adapter = save_adapter(model, folder / "both.safetensors", extra_tensors={**tensors, **audio_tensors},
                           extra_metadata={**metadata, **audio_metadata})
    return BothFiles(base, adapter)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> BothFiles:
    return save_both_adapter(tmp_path_factory.mktemp("both"))


@pytest.fixture(scope="module")
def both(files) -> Predictor:
    return Predictor.load(str(files.base), files.adapter)


def tone(freq: float, kind: str = "wav") -> bytes:
    return encode_audio(kind, 1.0, 16_000, 1, freq)


def apart(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def with_offset(predictor: Predictor, offset: torch.Tensor, monkeypatch) -> list[float]:
    """The probabilities when the visual path alone gives ``offset`` and nothing is heard (a stand-in image)."""
    alone = dataclasses.replace(predictor, hearing=None)
    with monkeypatch.context() as patch:
        patch.setattr(alone.visual, "offset", lambda image, name: offset)
        return alone.predict(png("gray"), QUESTION, CHOICES).probabilities


def test_an_image_and_a_sound_add_their_offsets(both, monkeypatch):
    """With an image and a sound the prompt offset is the image's plus the sound's: the probabilities equal those of
    that sum given alone, and differ when either the image or the sound changes or is left out."""
    red, noise, low, high = png("red"), noise_png(1), tone(220.0), tone(1980.0)
    assert "audio: " in both.describe() and "image encoder mm-tiny-vit" in both.describe()
    answer = both.predict(red, QUESTION, CHOICES, audio=low)
    assert answer.image_used and answer.audio_used and answer.note == "heard the sound"
    total = both.visual.offset(red, None) + both.hearing.offset(low, None)
    assert apart(answer.probabilities, with_offset(both, total, monkeypatch)) < 1e-6
    others = {"another image": both.predict(noise, QUESTION, CHOICES, audio=low),
              "another sound": both.predict(red, QUESTION, CHOICES, audio=high),
              "no sound": both.predict(red, QUESTION, CHOICES), "no image": both.predict(None, QUESTION, CHOICES,
                                                                                          audio=low)}
    for what, other in others.items():
        assert apart(answer.probabilities, other.probabilities) > 1e-3, what


@pytest.mark.parametrize("container", ["mp4", "webm"])
def test_a_clips_sound_track_is_heard_unless_a_sound_is_given(both, monkeypatch, container):
    """A clip with a sound track gives its frames to the image part and its track to the audio part; a separate sound
    replaces the track; the track's pitch changes the answer while the frames stay the same."""
    clip, other = (clip_with_sound(COLOURS, freq, container) for freq in (220.0, 1980.0))
    answer = both.predict(clip, QUESTION, CHOICES)
    assert answer.image_used and answer.audio_used and answer.note == "heard the clip's sound track"
    seen = both.visual.offset(clip, None)
    assert apart(answer.probabilities, with_offset(both, seen + both.hearing.offset(clip, None), monkeypatch)) < 1e-6
    assert apart(answer.probabilities, both.predict(other, QUESTION, CHOICES).probabilities) > 1e-3
    high = tone(1980.0, "flac")
    given = both.predict(clip, QUESTION, CHOICES, audio=high)
    assert given.note == "heard the sound"
    assert apart(given.probabilities, with_offset(both, seen + both.hearing.offset(high, None), monkeypatch)) < 1e-6


def test_eval_hears_and_sees_each_problem_as_the_demo_does(files, both, tmp_path, monkeypatch, capsys):
    """``eval scienceqa`` with the two-part adapter on four problems (an image and a sound; another image and sound;
    a clip whose sound track is its only sound; a clip with a separate sound) gives each the predictor's
    probabilities for the same inputs (the data path adds both offsets and hears a clip's track as the demo does)."""
    monkeypatch.setenv("MM_ADAPTER_CACHE", str(tmp_path / "feature-cache"))
    media = {"1": ("red.png", png("red"), "low.wav", tone(220.0)),
             "2": ("noise.png", noise_png(1), "high.flac", tone(1980.0, "flac")),
             "3": ("clip.mp4", clip_with_sound(COLOURS, 1980.0, "mp4"), None, None),
             "4": ("clip.webm", clip_with_sound(COLOURS, 220.0, "webm"), "high.ogg", tone(1980.0, "ogg"))}
    data, problems = tmp_path / "data", {}
    for pid, (image, image_bytes, audio, audio_bytes) in media.items():
        problems[pid] = {"question": QUESTION, "choices": CHOICES, "answer": 0, "hint": "", "image": image,
                         "audio": audio, "split": "test"}
        folder = data / "images" / "test" / pid
        folder.mkdir(parents=True)
        (folder / image).write_bytes(image_bytes)
        if audio:
            (folder / audio).write_bytes(audio_bytes)
    (data / "problems.json").write_text(json.dumps(problems))
    (data / "pid_splits.json").write_text(json.dumps({"test": list(media)}))
    out = tmp_path / "eval"
    assert main(["eval", "scienceqa", "--split", "test", "--base", str(files.base), "--data", str(data),
                 "--adapter", str(files.adapter), "--out", str(out), "--bootstrap", "0", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "images: 4 of 4 problems" in err and "sound: 4 of 4 problems" in err, err
    found = json.loads((out / "predictions.json").read_text())["probabilities"]
    for pid, (_, image_bytes, _, audio_bytes) in media.items():
        expected = both.predict(image_bytes, QUESTION, CHOICES, audio=audio_bytes).probabilities
        assert apart(found[pid], expected) < 1e-5, pid
