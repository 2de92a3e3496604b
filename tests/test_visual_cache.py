"""Feature cache (no encoder run on later epochs, corrupt entries recomputed) and bad-image one-liners."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from mm_adapter import MMAdapterError
from mm_adapter.data.features import ImageOffsets, compute_features, problem_image, report_skipped, with_features
from mm_adapter.encoders.clip import TINY_VIT, VisualConfig, build_encoder
from mm_adapter.encoders.feature_cache import FeatureCache, image_features, load_image
from mm_adapter.encoders.projection import VisualProjection
from mm_adapter.scienceqa.data import Problem


@pytest.fixture(scope="module")
def encoder():
    return build_encoder(VisualConfig(clip_model=TINY_VIT, clip_layers=2))


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MM_ADAPTER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def png(color, size=(40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


def noisy_png(seed=0) -> bytes:
    array = (np.random.default_rng(seed).random((48, 48, 3)) * 255).astype("uint8")
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def test_second_pass_runs_the_encoder_zero_times(tmp_path, encoder, cache_dir):
    """Features are cached by content: duplicates are encoded once, a second pass (epoch 2) runs the encoder zero times
    and gives identical features, equal to encoding directly."""
    paths = []
    for i, color in enumerate(["red", "green", "blue"]):
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(png(color))
    images = [paths[0], None, paths[1], png("blue"), paths[0]]  # bytes of the same picture as paths[2]
    calls = encoder.images_encoded
    first = image_features(encoder, images)
    assert encoder.images_encoded - calls == 3  # duplicates (same content hash) encoded once
    assert first.mask.tolist() == [True, False, True, True, True]
    assert torch.equal(first.features[1], torch.zeros(encoder.feature_dim))
    assert torch.equal(first.features[0], first.features[4])
    cache_files = sorted((cache_dir / "features" / encoder.identity).rglob("*.npy"))
    assert len(cache_files) == 3
    calls, batches = encoder.images_encoded, encoder.calls
    cache = FeatureCache(encoder)
    second = image_features(encoder, images, cache=cache)
    assert encoder.images_encoded == calls and encoder.calls == batches  # epoch 2: no encoder run at all
    assert cache.hits == 4 and cache.misses == 0
    assert torch.equal(second.features, first.features) and torch.equal(second.mask, first.mask)
    direct = encoder(torch.stack([encoder.preprocess(Image.open(paths[1]))]))
    torch.testing.assert_close(first.features[2], direct[0])


def test_cache_key_depends_on_the_encoder(encoder, cache_dir):
    """The cache is keyed by the encoder: another encoder's features are never served from it."""
    other = build_encoder(VisualConfig(clip_model=TINY_VIT, clip_layers=(2,)))
    image_features(encoder, [png("red")])
    before = other.images_encoded
    out = image_features(other, [png("red")])
    assert other.images_encoded == before + 1 and out.features.shape == (1, 64)


def test_corrupt_or_misshaped_entry_is_recomputed(encoder):
    """A corrupt or misshaped cache entry is recomputed and rewritten whole (no temp files left), never used."""
    data = noisy_png()
    reference = image_features(encoder, [data], cache=False).features
    cache = FeatureCache(encoder)
    image_features(encoder, [data], cache=cache)
    entry = next(cache.folder.rglob("*.npy"))
    for damage in (b"garbage", np.lib.format.magic(1, 0) + b"\x00\x00", None):
        if damage is None:
            np.save(entry, np.zeros(3, dtype=np.float32))  # wrong shape
        else:
            entry.write_bytes(damage)
        calls = encoder.images_encoded
        out = image_features(encoder, [data], cache=cache)
        assert encoder.images_encoded == calls + 1
        torch.testing.assert_close(out.features, reference)
        assert np.load(entry).shape == (encoder.feature_dim,)  # rewritten whole
    assert not [p for p in cache.folder.rglob("*") if p.name.startswith(".")]  # no temp files left


@pytest.fixture()
def bad_images(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("this is not an image\n")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(noisy_png()[:2000])
    huge = tmp_path / "huge.png"
    huge.write_bytes(png("white", size=(3000, 3000)))
    return {"not an image": text, "truncated": truncated, "too large": huge,
            "not found": tmp_path / "missing.png", "folder": tmp_path}


@pytest.mark.parametrize("kind", ["not an image", "truncated", "too large", "not found", "folder"])
def test_bad_image_is_one_line_naming_the_file(encoder, bad_images, monkeypatch, kind):
    """Every bad image (not an image, truncated, too large, missing, a folder) is one line starting with the file's
    name."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)
    path = bad_images[kind]
    expected = {"not an image": "not an image", "truncated": "truncated", "too large": "too large",
                "not found": "no such image file", "folder": "is a folder"}[kind]
    with pytest.raises(MMAdapterError) as info:
        image_features(encoder, [png("red"), path])
    message = str(info.value)
    assert message.startswith(str(path)) and expected in message and "\n" not in message
    with pytest.raises(MMAdapterError, match=expected):
        load_image(path)


def test_skip_option_masks_bad_images_and_keeps_the_rest(encoder, bad_images, monkeypatch):
    """With on_error=skip, bad images become masked zero rows with one reason each and the good ones are kept; an
    unknown on_error is refused."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)
    images = [png("red"), bad_images["truncated"], None, bad_images["too large"], bad_images["not found"]]
    out = image_features(encoder, images, on_error="skip")
    assert out.mask.tolist() == [True, False, False, False, False]
    assert len(out.skipped) == 3
    for kind, reason in (("truncated", "truncated"), ("not found", "no such image file"), ("too large", "too large")):
        assert sum(line.startswith(f"{bad_images[kind]}: ") and reason in line for line in out.skipped) == 1
    assert torch.equal(out.features[1:], torch.zeros(4, encoder.feature_dim))
    with pytest.raises(MMAdapterError, match="on_error"):
        image_features(encoder, images, on_error="ignore")


def test_bytes_input_is_named_in_errors(encoder):
    """An image given as bytes is named in errors by the name passed for it."""
    with pytest.raises(MMAdapterError, match="problem 42: not an image"):
        image_features(encoder, [b"\x89PNG nonsense"], names=["problem 42"])


def test_problem_features_by_pid_and_bad_images_as_no_image_problems(tmp_path, encoder):
    """Per-problem features: official-layout files under the root and HF-layout bytes both encode (the same picture
    gives the same row); a bad image is one line that names the way out (--skip-bad-images), or with skipping its
    problem becomes a no-image one, said in one line; rows of problems without an image are 0 and masked, and the
    fingerprint (part of an eval run's identity) changes when an image is skipped."""
    root = tmp_path / "sqa"
    (root / "images" / "val" / "1").mkdir(parents=True)
    (root / "images" / "val" / "1" / "image.png").write_bytes(png("red"))
    (root / "images" / "val" / "3").mkdir(parents=True)
    (root / "images" / "val" / "3" / "image.png").write_bytes(b"not a picture")
    problems = [Problem("1", "q?", ("a", "b"), 0, image="image.png", split="val"),
                Problem("2", "q?", ("a", "b"), 1, image_bytes=png("red"), split="val"),
                Problem("3", "q?", ("a", "b"), 0, image="image.png", split="val"),
                Problem("4", "q?", ("a", "b"), 1, split="val")]
    assert problem_image(problems[0], root) == root / "images" / "val" / "1" / "image.png"
    assert problem_image(problems[1], None) == png("red") and problem_image(problems[3], root) is None
    with pytest.raises(MMAdapterError, match="3/image.png: not an image.*--skip-bad-images") as info:
        compute_features(encoder, problems, root)
    assert "\n" not in str(info.value)
    good = compute_features(encoder, problems[:2], root)
    assert not good.skipped and sorted(good.by_pid) == ["1", "2"]
    features = compute_features(encoder, problems, root, skip_bad=True)
    assert sorted(features.by_pid) == ["1", "2"] and features.dim == encoder.feature_dim
    assert len(features.skipped) == 1 and "3/image.png" in features.skipped[0]
    assert torch.equal(features.by_pid["1"], features.by_pid["2"])  # the same picture, as a file and as bytes
    rows, mask = features.rows(problems)
    assert mask.tolist() == [True, True, False, False] and torch.equal(rows[2:], torch.zeros(2, encoder.feature_dim))
    said = io.StringIO()
    report_skipped(features, "val", said)
    report_skipped(good, "val", said)  # nothing skipped: nothing said
    err = said.getvalue()
    assert err.count("\n") == 1 and err.startswith("val: 1 bad image(s) skipped") and "3/image.png" in err
    assert features.fingerprint(problems) == compute_features(encoder, problems, root, skip_bad=True).fingerprint(
        problems)
    (root / "images" / "val" / "3" / "image.png").write_bytes(png("blue"))  # the same run with that image usable
    assert compute_features(encoder, problems, root).fingerprint(problems) != features.fingerprint(problems)
    examples = with_features([{"input_ids": [1]}] * 4, problems, features)
    assert [bool(e["image_mask"]) for e in examples] == [True, True, False, False]
    assert torch.equal(examples[0]["image_features"], features.by_pid["1"]) and examples[0]["input_ids"] == [1]
    projection = VisualProjection(encoder.feature_dim, 32, VisualConfig(clip_model=TINY_VIT, clip_layers=2,
                                                                        visual_zero_init=False))
    offsets = ImageOffsets(projection, features)(problems)
    assert offsets.shape == (4, 32) and torch.equal(offsets[2:], torch.zeros(2, 32)) and offsets[0].abs().sum() > 0
