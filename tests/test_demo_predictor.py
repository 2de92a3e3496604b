"""The demo's predictor on a tiny base folder: the image reaches the answer only through a visual adapter,
bad input is one line, loading refuses unusable encoders, and concurrent calls give sequential results.

``make_demo_files`` is also what the CLI and web tests load (it writes a base folder and adapters).
"""

from __future__ import annotations

import io
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mm_adapter.encoders.feature_cache as feature_cache_module
from mm_adapter import AdapterConfig, MMAdapterError, adapter_parameters, attach_adapter, save_adapter
from mm_adapter.demo.predictor import Predictor, check_image, check_question
from mm_adapter.encoders.clip import TINY_VIT, VisualConfig, build_encoder
from mm_adapter.encoders.projection import VisualProjection, visual_extras
from test_eval_run import make_tokenizer, single_thread  # noqa: F401 (autouse fixture)
from tiny import tiny_model

TINY = VisualConfig(clip_model=TINY_VIT, clip_layers=2)
QUESTION = "Which solution has a higher concentration of green particles?"
CHOICES = ["Solution A", "Solution B", "neither; their concentrations are the same"]


def png(array_or_colour, size=(48, 48)) -> bytes:
    image = (Image.fromarray(array_or_colour) if isinstance(array_or_colour, np.ndarray)
             else Image.new("RGB", size, array_or_colour))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def noise_png(seed: int = 0) -> bytes:
    return png((np.random.default_rng(seed).random((48, 48, 3)) * 255).astype("uint8"))


@dataclass(frozen=True)
class DemoFiles:
    """A tiny base folder, adapters for it (visual on mm-tiny-vit, text-only) and two images."""

    base: Path
    visual: Path
    text_only: Path
    red: Path
    noise: Path


def adapted_model(base: Path):
    """A tiny Llama saved to ``base`` (beside the tokenizer), with an adapter whose gates are open."""
    model = tiny_model("llama-gqa", vocab_size=len(make_tokenizer()), bos_token_id=1, eos_token_id=2)
    model.save_pretrained(base)
    attach_adapter(model, AdapterConfig(adapter_len=3, adapter_layers=2))
    with torch.no_grad():
        for parameters in adapter_parameters(model).values():
            parameters["gate"].fill_(0.5)  # a trained-looking adapter: prompts reach the output
    return model


def save_visual_adapter(model, path: Path, config: VisualConfig = TINY,
                        encoder_config: VisualConfig | None = None) -> Path:
    """An adapter file recording ``config``, whose projection (laid out by ``config``: its frames too; last layer
    N(0, 1)) was 'trained' on the encoder of ``encoder_config`` (default: the tiny ViT that ``TINY`` builds)."""
    encoder = build_encoder(encoder_config or TINY)
    projection = VisualProjection(encoder.feature_dim, 64, config)
    torch.manual_seed(3)
    torch.nn.init.normal_(projection.proj[-1].weight)
    tensors, metadata = visual_extras(config, projection, encoder)
    return save_adapter(model, path, extra_tensors=tensors, extra_metadata=metadata)


def make_demo_files(folder: Path) -> DemoFiles:
    base = folder / "base"
    make_tokenizer().save_pretrained(base)
    model = adapted_model(base)
    red, noise = folder / "red.png", folder / "noise.png"
    red.write_bytes(png("red"))
    noise.write_bytes(noise_png())
    return DemoFiles(base, save_visual_adapter(model, folder / "visual.safetensors"),
                     save_adapter(model, folder / "text.safetensors"), red, noise)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> DemoFiles:
    return make_demo_files(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def visual(files) -> Predictor:
    return Predictor.load(str(files.base), files.visual)


def test_the_image_goes_through_the_projection_into_the_prompts(visual, files):
    """With a visual adapter the image changes the answer only through the projection into the prompts (a zeroed
    projection equals no image); probabilities sum to 1 and name the chosen option; path and bytes give the same
    answer."""
    red = visual.predict(files.red, QUESTION, CHOICES)
    noise = visual.predict(files.noise.read_bytes(), QUESTION, CHOICES)
    none = visual.predict(None, QUESTION, CHOICES)
    for prediction in (red, noise, none):
        assert math.isclose(sum(prediction.probabilities), 1.0, abs_tol=1e-5)
        assert prediction.choice_index == int(np.argmax(prediction.probabilities))
        index = prediction.choice_index
        assert (prediction.letter, prediction.text) == ("ABC"[index], CHOICES[index])
    assert red.image_used and noise.image_used and red.note is None
    assert not none.image_used and "no image given" in none.note
    assert max(abs(a - b) for a, b in zip(red.probabilities, noise.probabilities)) > 1e-3  # the image matters
    assert max(abs(a - b) for a, b in zip(red.probabilities, none.probabilities)) > 1e-3
    assert visual.predict(files.red.read_bytes(), QUESTION, CHOICES).probabilities == red.probabilities
    # with the projection's last layer at zero the offset is 0: the image can no longer change the answer
    last = visual.visual.projection.proj[-1].weight
    saved = last.detach().clone()
    with torch.no_grad():
        last.zero_()
    try:
        blind = visual.predict(files.red, QUESTION, CHOICES).probabilities
    finally:
        with torch.no_grad():
            last.copy_(saved)
    np.testing.assert_allclose(blind, none.probabilities, atol=1e-6)
    assert "image encoder mm-tiny-vit (random weights)" in visual.describe()


def test_the_context_is_part_of_the_prompt(visual, files):
    """The optional context text is part of the prompt (it changes the probabilities)."""
    plain = visual.predict(files.red, QUESTION, CHOICES).probabilities
    hinted = visual.predict(files.red, QUESTION, CHOICES, context="The particles are green.").probabilities
    assert plain != hinted


@pytest.mark.parametrize("adapter", [None, "text_only"])
def test_without_visual_parts_the_image_is_checked_then_ignored(files, adapter):
    """Without visual parts (no adapter or a text-only one) an image is checked, then ignored with a note; a non-image
    is still refused."""
    predictor = Predictor.load(str(files.base), getattr(files, adapter) if adapter else None)
    with_image = predictor.predict(files.noise, QUESTION, CHOICES)
    assert not with_image.image_used
    assert ("no adapter loaded" if adapter is None else "has no visual parts") in with_image.note
    assert with_image.probabilities == predictor.predict(None, QUESTION, CHOICES).probabilities
    assert "images are ignored" in predictor.describe()
    with pytest.raises(MMAdapterError, match="not an image"):
        predictor.predict(b"hello, not a picture", QUESTION, CHOICES)


@pytest.mark.parametrize("question, choices, message", [
    ("", CHOICES, "question is empty"),
    ("Why?", ["only one"], "at least 2 choices, got 1"),
    ("Why?", [], "at least 2 choices, got 0"),
    ("Why?", ["a", "  "], "choice 2 is empty"),
    ("Why?", ["a", "a"], "'a' is given more than once"),
    ("Why?", [str(i) for i in range(27)], "at most 26"),
])
def test_bad_questions_are_one_line(question, choices, message):
    """Every bad question or choice list is refused in one line saying what is wrong."""
    with pytest.raises(MMAdapterError, match=message) as info:
        check_question(question, choices)
    assert "\n" not in str(info.value)


def test_bad_images_are_one_line(tmp_path, monkeypatch):
    """Every bad image (empty, not an image, truncated, missing, too many pixels, too many bytes) is refused in one
    line."""
    cases = {b"": "empty", b"GIF89a nonsense": "not an image", noise_png()[:300]: "truncated",
             tmp_path / "missing.png": "no such image file", png("white", (64, 64)): "too large"}
    for image, message in cases.items():
        if message == "too large":
            monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64x64 is then a decompression bomb
        with pytest.raises(MMAdapterError, match=message) as info:
            check_image(image)
        assert "\n" not in str(info.value)
    monkeypatch.setattr(feature_cache_module, "MAX_IMAGE_BYTES", 100)
    with pytest.raises(MMAdapterError, match=r"image file too large \(0.0 MiB"):
        check_image(noise_png(), "upload.png")


def test_loading_refuses_encoders_the_adapter_cannot_use(files, tmp_path):
    """Loading refuses an adapter whose image encoder is unknown, whose checkpoint does not fit, or that was trained
    with another encoder, in one line."""
    model = adapted_model(tmp_path / "base")
    import open_clip

    other = tmp_path / "b32.pt"  # a checkpoint whose patch embedding belongs to a different encoder
    torch.save({"state_dict": {"visual.conv1.weight": torch.zeros(768, 3, 32, 32)}}, other)
    unknown = VisualConfig(clip_model="ViT-Z-99", clip_layers=2)
    assert open_clip.get_model_config("ViT-Z-99") is None
    foreign = VisualConfig(clip_model=TINY_VIT, clip_layers=2, clip_pretrained=str(other))
    cases = {
        "unknown CLIP model 'ViT-Z-99'": save_visual_adapter(model, tmp_path / "unknown.safetensors", unknown),
        "does not fit CLIP model mm-tiny-vit": save_visual_adapter(model, tmp_path / "other.safetensors", foreign),
        "trained with image encoder": save_visual_adapter(
            model, tmp_path / "seed.safetensors", encoder_config=VisualConfig(clip_model=TINY_VIT, clip_layers=2,
                                                                              clip_seed=7)),
    }
    for message, adapter in cases.items():
        with pytest.raises(MMAdapterError, match=message) as info:
            Predictor.load(str(files.base), adapter)
        assert "\n" not in str(info.value)


def test_concurrent_predictions_match_sequential_ones(visual, files):
    """Predictions from many threads at once equal sequential ones (the shared model's prompt offset is not raced)."""
    images = [files.red, files.noise, None, files.red.read_bytes()] * 3
    expected = [visual.predict(image, QUESTION, CHOICES).probabilities for image in images]
    with ThreadPoolExecutor(max_workers=len(images)) as pool:
        results = list(pool.map(lambda image: visual.predict(image, QUESTION, CHOICES).probabilities, images))
    assert results == expected


def test_a_v2_visual_adapter_answers_in_the_demo(files, tmp_path):
    """The demo loads a LLaMA-Adapter V2 file with its visual part: the model carries the file's V2 settings and
    values (early fusion into the bottom adapted layer), and the image still changes the answer."""
    from mm_adapter import load_base
    from mm_adapter.model.adapter import adapter_v2_config, adaption_prompts
    from mm_adapter.model.config import AdapterV2Config

    model, _ = load_base(str(files.base))
    attach_adapter(model, AdapterConfig(adapter_len=3, adapter_layers=2), AdapterV2Config(fusion_layers=1))
    with torch.no_grad():
        for parameters in adapter_parameters(model).values():
            parameters["gate"].fill_(0.5)
        model.model.layers[0].mlp.down_proj.adapter.bias.fill_(0.25)
    path = save_visual_adapter(model, tmp_path / "v2.safetensors")
    predictor = Predictor.load(str(files.base), path)
    assert adapter_v2_config(predictor.model) == AdapterV2Config(fusion_layers=1)
    assert [m.visual for m in adaption_prompts(predictor.model).values()] == [True, False]
    assert torch.equal(predictor.model.model.layers[0].mlp.down_proj.adapter.bias, torch.full((64,), 0.25))
    red = predictor.predict(files.red, QUESTION, CHOICES).probabilities
    assert max(abs(a - b) for a, b in zip(red, predictor.predict(None, QUESTION, CHOICES).probabilities)) > 1e-3
