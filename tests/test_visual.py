"""The visual path: frozen multi-scale encoder, projection into the prompts, counts, adapter files."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from mm_adapter import AdapterConfig, MMAdapterError, attach_adapter, prompt_offset, read_adapter, save_adapter
from mm_adapter.encoders.clip import TINY_VIT, VisualConfig, build_encoder, feature_dim, resolve_depths
from mm_adapter.encoders.projection import (
    VisualProjection, check_encoder, projection_from_adapter, trainable_summary, visual_extras,
)
from mm_adapter.errors import ConfigError
from mm_adapter.pretrained import load_multimodal_adapter
from tiny import left_padded_batch, tiny_model

TINY = VisualConfig(clip_model=TINY_VIT, clip_layers=2)


@pytest.fixture(scope="module")
def encoder():
    return build_encoder(TINY)


def test_config_json_round_trip_and_validation():
    """The visual config survives its JSON form; every invalid value is a ConfigError (an MMAdapterError) naming
    its field; the older field names are read, unknown ones refused."""
    config = VisualConfig(clip_model="ViT-B-32", clip_pretrained="/x/ckpt.pt", clip_layers=(3, 6, 12),
                          visual_projection="linear")
    assert VisualConfig.from_json(config.to_json()) == config
    assert VisualConfig.from_json(VisualConfig().to_json()) == VisualConfig()
    for bad in (dict(clip_layers=0), dict(clip_layers=(2, -1)), dict(visual_projection="conv"),
                dict(visual_hidden=0), dict(clip_seed=-1)):
        with pytest.raises(ConfigError, match=f"^{next(iter(bad))}: ") as info:
            VisualConfig(**bad)
        assert info.value.field == next(iter(bad)) and isinstance(info.value, MMAdapterError)
    with pytest.raises(MMAdapterError, match="unknown visual config field"):
        VisualConfig.from_dict({"clip": "x"})
    renamed = {"pretrained": "/x/ckpt.pt", "layers": [3, 6, 12], "seed": 2, "projection": "linear", "hidden_dim": 8,
               "norm": False, "zero_init": False, "standardize": True}
    assert VisualConfig.from_dict({"clip_model": "ViT-B-32", **renamed}) == VisualConfig(
        clip_model="ViT-B-32", clip_pretrained="/x/ckpt.pt", clip_layers=(3, 6, 12), clip_seed=2,
        visual_projection="linear", visual_hidden=8, visual_norm=False, visual_zero_init=False,
        visual_standardize=True)
    with pytest.raises(MMAdapterError, match="clip_layers"):  # an old name's bad value names the field it is now
        VisualConfig.from_dict({"layers": 0}, source="old.safetensors")


def test_depths_are_evenly_spaced_and_checked():
    """N depths are evenly spaced ending at the last block; explicit depths are sorted; too many or too deep is refused
    in one line."""
    assert resolve_depths(4, 24) == [6, 12, 18, 24]
    assert resolve_depths(4, 12) == [3, 6, 9, 12]
    assert resolve_depths((12, 3), 12) == [3, 12]
    with pytest.raises(MMAdapterError, match="only 2 blocks"):
        resolve_depths(3, 2)
    with pytest.raises(MMAdapterError, match="exceed"):
        resolve_depths((5,), 2)


def test_multiscale_features_shape_frozen_and_reproducible(encoder, capsys):
    """Features are the per-depth class tokens, each layer-normalised, from a frozen encoder in eval mode; the same seed
    rebuilds the same encoder (one RANDOM-weights line), another seed another one."""
    assert encoder.depths == [1, 2] and encoder.feature_dim == 2 * 64 == feature_dim(TINY)
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not encoder.training  # stays in eval mode
    pixels = torch.randn(3, 3, 32, 32)
    features = encoder(pixels)
    assert features.shape == (3, 128) and not features.requires_grad
    # each depth's class token is normalised on its own: mean 0, variance 1 per 64-wide chunk
    chunks = features.view(3, 2, 64)
    torch.testing.assert_close(chunks.mean(-1), torch.zeros(3, 2), atol=1e-5, rtol=0)
    # the last chunk is the final block's class token (before ln_post), normalised
    out = encoder.visual.forward_intermediates(pixels, indices=[1], intermediates_only=True, output_fmt="NLC",
                                               output_extra_tokens=True)
    last = torch.nn.functional.layer_norm(out["image_intermediates_prefix"][0][:, 0], (64,))
    torch.testing.assert_close(chunks[:, 1], last)
    capsys.readouterr()
    again = build_encoder(TINY)
    assert torch.equal(again(pixels), features) and again.identity == encoder.identity
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "RANDOM weights" in err and "seed 0" in err
    other = build_encoder(VisualConfig(clip_model=TINY_VIT, clip_layers=2, clip_seed=1))
    assert other.identity != encoder.identity and not torch.equal(other(pixels), features)


def test_never_downloads_and_bad_names_are_one_line(monkeypatch):
    """Building an encoder never downloads (a tag or hub name is refused unless allowed) and an unknown name is one line
    with the way to list valid ones."""
    monkeypatch.delenv("MM_ADAPTER_ALLOW_DOWNLOAD", raising=False)
    with pytest.raises(MMAdapterError, match="needs a download.*local checkpoint"):
        build_encoder(VisualConfig(clip_model="ViT-L-14", clip_pretrained="openai"))
    with pytest.raises(MMAdapterError, match="neither a file nor a tag"):
        build_encoder(VisualConfig(clip_model="ViT-L-14", clip_pretrained="no-such-tag"))
    with pytest.raises(MMAdapterError, match="unknown CLIP model 'ViT-Z-99'.*list_models"):
        build_encoder(VisualConfig(clip_model="ViT-Z-99"))
    with pytest.raises(MMAdapterError, match="would be downloaded"):
        build_encoder(VisualConfig(clip_model="hf-hub:org/model"))


def test_checkpoint_file_loads_and_another_encoders_checkpoint_is_refused(tmp_path, encoder):
    """A local checkpoint of the named encoder loads (and changes its identity); another encoder's checkpoint or garbage
    is refused."""
    import open_clip

    model = open_clip.create_model(TINY_VIT)
    with torch.no_grad():
        model.visual.conv1.weight.fill_(0.5)
    path = tmp_path / "tiny.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    loaded = build_encoder(VisualConfig(clip_model=TINY_VIT, clip_layers=2, clip_pretrained=str(path)))
    assert not loaded.random_weights and torch.all(loaded.visual.conv1.weight == 0.5)
    assert loaded.identity != encoder.identity
    other = tmp_path / "b32.pt"
    torch.save({"state_dict": {"visual.conv1.weight": torch.zeros(768, 3, 32, 32)}}, other)
    with pytest.raises(MMAdapterError, match="does not fit CLIP model mm-tiny-vit"):
        build_encoder(VisualConfig(clip_model=TINY_VIT, clip_pretrained=str(other)))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(MMAdapterError, match="does not fit"):
        build_encoder(VisualConfig(clip_model=TINY_VIT, clip_pretrained=str(garbage)))


def test_projection_zero_rows_for_problems_without_image():
    """The projection starts at zero, and rows without an image are exactly zero even with NaN features; gradients stay
    finite."""
    projection = VisualProjection(128, 64, TINY)
    features = torch.randn(3, 128)
    assert torch.equal(projection(features), torch.zeros(3, 64))  # zero-init last layer
    torch.nn.init.normal_(projection.proj[-1].weight)
    features[1] = float("nan")  # even garbage in a masked row must not leak
    out = projection(features, torch.tensor([True, False, True]))
    assert torch.equal(out[1], torch.zeros(64)) and out[0].abs().sum() > 0 and out[2].abs().sum() > 0
    out.nan_to_num().sum().backward()
    assert projection.proj[0].weight.grad.isfinite().all()


def test_offset_changes_only_rows_with_an_image():
    """At init the visual offset leaves the text-only model unchanged; trained, it changes only rows with an image (a
    row without one is bit-identical) and gradients reach the whole projection."""
    model = attach_adapter(tiny_model("llama-gqa"), AdapterConfig(adapter_len=3, adapter_layers=2))
    for module in model.modules():
        if hasattr(module, "gate") and isinstance(module.gate, torch.nn.Parameter):
            torch.nn.init.constant_(module.gate, 0.5)  # a trained-looking adapter
    ids, mask, positions = left_padded_batch(lengths=(9, 7, 8))
    projection = VisualProjection(128, 64, TINY)
    features, has_image = torch.randn(3, 128), torch.tensor([True, False, True])
    text_only = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    with prompt_offset(model, projection(features, has_image)):  # zero-init: the text-only model
        at_init = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    # per-sample prompts batch the prompt matmuls, so equality is up to float round-off
    torch.testing.assert_close(at_init, text_only, atol=1e-6, rtol=1e-5)
    torch.nn.init.normal_(projection.proj[-1].weight, std=0.5)
    with prompt_offset(model, projection(features, has_image)):
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    assert torch.equal(logits[1], at_init[1])  # no image: bit-identical to the zero-offset run
    assert not torch.allclose(logits[0], text_only[0]) and not torch.allclose(logits[2], text_only[2])
    logits[:, -1].sum().backward()  # gradients reach the whole projection through the prompts
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in projection.parameters())


def test_llama7b_with_vit_l14_counts_about_1_8m(capsys):
    """LLaMA-7B with ViT-L-14 features has the paper's ~1.8M trainable parameters (adapter 1.23M + projection 0.54M);
    the linear projection's count is exact."""
    config = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=32, vocab_size=32000)
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    attach_adapter(model, AdapterConfig())
    projection = VisualProjection.from_config(VisualConfig(), 4096, device="meta")
    assert feature_dim(VisualConfig()) == 4 * 1024
    print(trainable_summary(model, projection))
    line = capsys.readouterr().out
    assert "adapter 1,229,760 + visual projection 536,640 = 1,766,400 (1.77M)" in line
    linear = VisualProjection.from_config(VisualConfig(visual_projection="linear"), 4096, device="meta")
    assert sum(p.numel() for p in linear.parameters()) == 8192 + 4096 * 4096 + 4096


def test_adapter_file_carries_visual_config_and_refuses_another_encoder(tmp_path, encoder):
    """An adapter file carries the visual config and projection exactly, and the identity of its encoder: another
    encoder is refused; a text-only file has no visual part."""
    model = attach_adapter(tiny_model("llama-gqa"), AdapterConfig(adapter_len=3, adapter_layers=2))
    config = TINY
    projection = VisualProjection.from_config(config, 64)
    torch.nn.init.normal_(projection.proj[-1].weight)
    tensors, metadata = visual_extras(config, projection, encoder)
    path = save_adapter(model, tmp_path / "mm.safetensors", extra_tensors=tensors, extra_metadata=metadata)
    adapter = read_adapter(path)
    loaded_config, loaded = projection_from_adapter(adapter)
    assert loaded_config == config
    for name, value in projection.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value)
    check_encoder(adapter, encoder)
    with pytest.raises(MMAdapterError, match="trained with image encoder"):
        check_encoder(adapter, build_encoder(VisualConfig(clip_model=TINY_VIT, clip_layers=2, clip_seed=7)))
    text_only = save_adapter(model, tmp_path / "text.safetensors")
    assert projection_from_adapter(read_adapter(text_only)) is None


# The visual metadata exactly as adapter files written before the fields were renamed carry it (TINY's values).
OLD_VISUAL_JSON = ('{"clip_model": "mm-tiny-vit", "hidden_dim": 64, "layers": 2, "norm": true, "pretrained": null, '
                   '"projection": "mlp", "seed": 0, "standardize": false, "zero_init": true}')


def test_adapter_file_with_the_older_visual_field_names_still_loads(tmp_path, encoder):
    """An adapter file whose visual metadata uses the field names before the rename (pretrained, layers, seed,
    projection, hidden_dim, norm, zero_init, standardize) loads as before: same config, encoder and projection."""
    model = attach_adapter(tiny_model("llama-gqa"), AdapterConfig(adapter_len=3, adapter_layers=2))
    projection = VisualProjection.from_config(TINY, 64)
    torch.nn.init.normal_(projection.proj[-1].weight)
    tensors, metadata = visual_extras(TINY, projection, encoder)
    assert json.loads(metadata["visual"]).keys() != json.loads(OLD_VISUAL_JSON).keys()  # the file below is older
    metadata["visual"] = OLD_VISUAL_JSON
    path = save_adapter(model, tmp_path / "old.safetensors", extra_tensors=tensors, extra_metadata=metadata)
    config, loaded = projection_from_adapter(read_adapter(path))
    assert config == TINY
    fresh = tiny_model("llama-gqa")
    found_encoder, found_projection = load_multimodal_adapter(fresh, path, "cpu")
    assert found_encoder.config == TINY and found_encoder.identity == encoder.identity
    for name, value in projection.state_dict().items():
        assert torch.equal(found_projection.state_dict()[name], value) and torch.equal(loaded.state_dict()[name], value)
