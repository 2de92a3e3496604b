"""Video clips through the CLIP path: decoding and uniform sampling (GIF, MP4, WebM), bad clips in one line, per-frame
cache entries, frame order, the temporal projection, and image adapters written before clips existed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from clips import clip, gif
from PIL import Image

import mm_adapter.encoders.video as video_module
from mm_adapter import MMAdapterError, read_adapter
from mm_adapter.demo.predictor import Predictor
from mm_adapter.encoders.clip import TINY_VIT, VisualConfig
from mm_adapter.encoders.feature_cache import FeatureCache, image_features
from mm_adapter.encoders.projection import VisualProjection, projection_from_adapter
from mm_adapter.encoders.video import clip_frames, count_frames, frame_order, is_clip, sample_indices
from mm_adapter.errors import ConfigError
from test_demo_predictor import CHOICES, QUESTION, make_demo_files, noise_png, png
from test_eval_run import single_thread  # noqa: F401 (autouse fixture)
from test_visual_cache import cache_dir, encoder  # noqa: F401 (fixtures: the tiny ViT, a fresh cache)

FIXTURE = Path(__file__).with_name("fixtures") / "image_adapter_e4db5fc"
RGB = {"red": (255, 0, 0), "green": (0, 128, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0),
       "white": (255, 255, 255), "black": (0, 0, 0)}
SIX = list(RGB)




def centre(image: Image.Image) -> tuple[int, int, int]:
    return image.convert("RGB").getpixel((16, 16))


def close(a, b, tolerance: int = 12) -> bool:  # lossy codecs move flat colours by a few levels
    return all(abs(x - y) <= tolerance for x, y in zip(a, b))


@pytest.mark.parametrize("kind", ["gif", "mp4", "webm"])
def test_clips_decode_to_uniformly_sampled_frames_in_time_order(kind):
    """GIF, MP4 and WebM are recognised by their bytes and give K frames at the middles of K equal segments, in
    order; K = 1 is the middle frame; a still image (a one-frame GIF too) is not a clip."""
    data = clip(SIX, kind)
    assert is_clip(data) and count_frames(data, f"c.{kind}") == 6
    assert sample_indices(6, 3) == [1, 3, 5] and sample_indices(6, 1) == [3] and sample_indices(24, 8)[0] == 1
    frames = clip_frames(data, f"c.{kind}", 3)
    assert all(close(centre(f), RGB[c]) for f, c in zip(frames, ["green", "yellow", "black"]))
    assert close(centre(clip_frames(data, f"c.{kind}", 1)[0]), RGB["yellow"])
    assert not is_clip(png("red")) and not is_clip(gif(["red"])) and not is_clip(b"hello")


def test_bad_clips_are_one_line_naming_the_file(monkeypatch):
    """Truncated or damaged clips, no frames, no video stream, more frames than the limit, fewer frames than K,
    frames over the pixel limit and K < 1 are each refused in one line naming the file."""
    good = clip(SIX, "mp4")
    cases = {
        "cut.mp4: damaged or truncated video clip": lambda: count_frames(good[: len(good) // 2], "cut.mp4"),
        "cut.gif: damaged or truncated video clip (the GIF ends": lambda: count_frames(gif(SIX)[:-40], "cut.gif"),
        "none.webm: the clip has no frames": lambda: count_frames(clip([], "webm"), "none.webm"),
        "none.mp4: the clip has no frames (no video stream": lambda: count_frames(clip([], "mp4"), "none.mp4"),
        "short.gif: the clip has 6 frames, fewer than frames=8": lambda: clip_frames(gif(SIX), "short.gif", 8),
        "frames must be an integer from 1 to 64, got 0": lambda: clip_frames(gif(SIX), "x.gif", 0),
    }
    for message, call in cases.items():
        with pytest.raises(MMAdapterError) as info:
            call()
        assert str(info.value).startswith(message) and "\n" not in str(info.value), str(info.value)
    monkeypatch.setattr(video_module, "MAX_CLIP_FRAMES", 4)
    with pytest.raises(MMAdapterError, match=r"^long.gif: clip too long \(over 4 frames, MAX_CLIP_FRAMES\)$"):
        count_frames(gif(SIX), "long.gif")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    with pytest.raises(MMAdapterError, match=r"^big.webm: clip frames too large \(32x32 pixels"):
        count_frames(clip(SIX, "webm"), "big.webm")
    with pytest.raises(ConfigError, match="^frames: must be >= 1"):
        VisualConfig(frames=0)


def test_clip_frames_are_cached_one_entry_each_and_a_still_is_held(encoder, cache_dir):
    """A clip gives (K, dim) features equal to encoding its sampled frames directly, one cache entry per frame
    (keyed by clip bytes, K and place): a second pass encodes nothing. A still image keeps its one entry and is held
    for all K frames; frames=1 keeps the image path's shape and features."""
    data = gif(SIX)
    calls = encoder.images_encoded
    found = image_features(encoder, [data, png("red"), None], frames=3)
    assert found.features.shape == (3, 3, encoder.feature_dim) and found.mask.tolist() == [True, True, False]
    assert encoder.images_encoded - calls == 4  # three frames and one still
    pixels = torch.stack([encoder.preprocess(f) for f in clip_frames(data, "c", 3)])
    torch.testing.assert_close(found.features[0], encoder(pixels))
    still = image_features(encoder, [png("red")]).features[0]
    assert all(torch.equal(row, still) for row in found.features[1])
    entries = sorted(p.name for p in (cache_dir / "features" / encoder.identity).rglob("*.npy"))
    assert len(entries) == 4 and sum("-clip3-" in name for name in entries) == 3
    calls = encoder.images_encoded
    again = image_features(encoder, [data, png("red"), None], frames=3)
    assert encoder.images_encoded == calls and torch.equal(again.features, found.features)
    middle = image_features(encoder, [data], frames=1).features
    assert middle.shape == (1, encoder.feature_dim)  # frames=1: a clip's middle frame, the image path's shape
    assert torch.allclose(middle[0], encoder(encoder.preprocess(clip_frames(data, "c", 1)[0])[None])[0])


def test_shuffled_order_is_a_fixed_permutation_per_clip(encoder):
    """frame_order=shuffled shows each clip's frames in a random order fixed by its bytes (the same in every run, so
    training and evaluation agree), different between clips; a still image is unchanged."""
    clips = [gif(SIX), gif(SIX[::-1])]
    ordered = image_features(encoder, clips, frames=6).features
    shuffled = image_features(encoder, clips, frames=6, order="shuffled").features
    assert torch.equal(shuffled, image_features(encoder, clips, frames=6, order="shuffled").features)
    permutations = []
    for row in range(2):
        permutation = [next(i for i in range(6) if torch.equal(shuffled[row, t], ordered[row, i])) for t in range(6)]
        assert sorted(permutation) == list(range(6)) and permutation != list(range(6))
        permutations.append(permutation)
    assert permutations[0] != permutations[1] and frame_order(6, "ordered", "x") == list(range(6))
    still = image_features(encoder, [png("blue")], frames=6, order="shuffled").features
    assert torch.equal(still, image_features(encoder, [png("blue")], frames=6).features)


def test_bad_clips_skip_with_a_reason_or_stop(encoder):
    """A bad clip stops the features with one line naming it, or with on_error=skip becomes a no-image row with its
    reason; a .mp4 that holds no video says so."""
    with pytest.raises(MMAdapterError, match="^notes.mp4: not a video clip"):
        image_features(encoder, [b"just some notes"], names=["notes.mp4"], frames=2)
    found = image_features(encoder, [gif(SIX[:2]), gif(SIX)], on_error="skip", frames=3,
                           names=["two.gif", "six.gif"])
    assert found.mask.tolist() == [False, True] and found.skipped == ["two.gif: the clip has 2 frames, fewer than "
                                                                      "frames=3"]


def test_the_projection_keeps_frame_order_and_one_frame_is_the_image_layout():
    """With K frames the last Linear takes the K per-frame vectors side by side: swapping two frames changes the
    offset, a row without an image is exactly 0; the per-frame layers are shared; K = 1 has the image projection's
    tensors and shapes; features with another frame count are refused in one line."""
    config = VisualConfig(clip_model=TINY_VIT, clip_layers=2, frames=3, visual_zero_init=False)
    projection = VisualProjection(128, 64, config)
    assert projection.proj[0].weight.shape == (64, 128) and projection.proj[-1].weight.shape == (64, 3 * 64)
    features = torch.randn(2, 3, 128)
    out = projection(features, torch.tensor([True, False]))
    assert out.shape == (2, 64) and torch.equal(out[1], torch.zeros(64))
    swapped = projection(features[:, [1, 0, 2]])
    assert not torch.allclose(swapped[0], out[0])
    linear = VisualProjection(128, 64, VisualConfig(frames=3, visual_projection="linear"))
    assert linear.proj[-1].weight.shape == (64, 3 * 128)
    still = VisualProjection(128, 64, VisualConfig(clip_model=TINY_VIT, clip_layers=2))
    assert {k: v.shape for k, v in still.state_dict().items()}["proj.2.weight"] == (64, 64)
    with pytest.raises(MMAdapterError, match=r"takes 3 frame\(s\) of 128 features, got features of shape \[2, 128\]"):
        projection(torch.randn(2, 128))


def test_image_adapter_written_before_video_support_answers_identically(tmp_path):
    """An image adapter file written by the code before clips existed (commit e4db5fc, kept as a fixture with the
    answers it gave then) loads as a 1-frame adapter and gives exactly the same probabilities."""
    expected = json.loads((FIXTURE / "expected.json").read_text())
    files = make_demo_files(tmp_path)  # the same tiny base the fixture was made for (fixed seeds)
    adapter = read_adapter(FIXTURE / "visual.safetensors")
    config, _ = projection_from_adapter(adapter)
    assert config.frames == 1 and config.frame_order == "ordered" and "frames" not in adapter.extra_metadata["visual"]
    predictor = Predictor.load(str(files.base), FIXTURE / "visual.safetensors")
    images = {"red": png("red"), "noise": noise_png(), "none": None}
    assert (expected["question"], expected["choices"]) == (QUESTION, CHOICES)
    for name, image in images.items():
        assert predictor.predict(image, QUESTION, CHOICES).probabilities == expected["probabilities"][name], name


def test_a_still_image_config_is_written_as_before():
    """A 1-frame config's JSON (adapter metadata, run identity) has no temporal fields, so older readers read new image
    adapters; a video config records them and round-trips."""
    assert "frames" not in VisualConfig().to_json() and "frame_order" not in VisualConfig().to_json()
    video = VisualConfig(frames=8, frame_order="shuffled")
    assert json.loads(video.to_json())["frames"] == 8 and VisualConfig.from_json(video.to_json()) == video


def test_cache_entries_of_other_frame_counts_are_separate(encoder, cache_dir):
    """Frame keys include K: a clip sampled at 2 frames never reads the entries made at 3 (other frames)."""
    data = gif(SIX)
    cache = FeatureCache(encoder)
    image_features(encoder, [data], cache=cache, frames=3)
    image_features(encoder, [data], cache=cache, frames=2)
    assert cache.hits == 0 and cache.misses == 2
