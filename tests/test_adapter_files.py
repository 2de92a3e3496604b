"""Adapter files: bit-exact round trips, refusing other bases and bad shapes, switching adapters."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mm_adapter import (
    AdapterConfig, MMAdapterError, adapter_parameters, apply_adapter, attach_adapter, load_adapter, read_adapter,
    save_adapter,
)
from tiny import left_padded_batch, tiny_model


def trained(model, config=AdapterConfig(adapter_len=3, adapter_layers=2), seed=7):
    attach_adapter(model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for entry in adapter_parameters(model).values():
            for parameter in entry.values():
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return model


def logits(model):
    ids, mask, positions = left_padded_batch()
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=positions).logits


def test_round_trip_is_bit_exact_and_holds_only_adapter_tensors(tmp_path):
    source = trained(tiny_model("llama-gqa"))
    path = save_adapter(source, tmp_path / "a.safetensors")
    with safe_open(str(path), "pt") as handle:
        assert sorted(handle.keys()) == ["layers.2.gate", "layers.2.prompt", "layers.3.gate", "layers.3.prompt"]
        metadata = handle.metadata()
    assert json.loads(metadata["config"])["adapter_len"] == 3
    assert json.loads(metadata["base"])["fingerprint"]
    target = tiny_model("llama-gqa")  # same seed = same base
    load_adapter(target, path)
    for index, entry in adapter_parameters(source).items():
        for name, parameter in entry.items():
            assert torch.equal(adapter_parameters(target)[index][name], parameter)
    assert torch.equal(logits(target), logits(source))


def test_same_base_in_bf16_has_the_same_fingerprint(tmp_path):
    path = save_adapter(trained(tiny_model("llama-gqa")), tmp_path / "a.safetensors")
    load_adapter(tiny_model("llama-gqa").to(torch.bfloat16), path)


def test_file_for_another_base_is_refused_naming_both(tmp_path):
    path = save_adapter(trained(tiny_model("llama-gqa")), tmp_path / "a.safetensors")
    other_weights = tiny_model("llama-gqa", seed=1)
    with pytest.raises(MMAdapterError, match=r"made for LlamaForCausalLM .* weights \w+, but this base is .* weights"):
        load_adapter(other_weights, path)
    other_shape = tiny_model("qwen2-gqa", hidden_size=32)
    with pytest.raises(MMAdapterError, match=r"made for LlamaForCausalLM \(hidden 64.*this base is Qwen2ForCausalLM "
                                             r"\(hidden 32"):
        load_adapter(other_shape, path)


def test_wrong_shapes_and_missing_tensors_are_named(tmp_path):
    path = save_adapter(trained(tiny_model("llama-gqa")), tmp_path / "a.safetensors")
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    bad = dict(tensors, **{"layers.3.prompt": torch.zeros(4, 64)})
    save_file(bad, tmp_path / "shape.safetensors", metadata=metadata)
    with pytest.raises(MMAdapterError, match=r"layers.3.prompt has shape \[4, 64\], expected \[3, 64\]"):
        read_adapter(tmp_path / "shape.safetensors")
    missing = {k: v for k, v in tensors.items() if k != "layers.2.gate"}
    save_file(missing, tmp_path / "missing.safetensors", metadata=metadata)
    with pytest.raises(MMAdapterError, match="missing tensor layers.2.gate"):
        read_adapter(tmp_path / "missing.safetensors")
    (tmp_path / "truncated.safetensors").write_bytes(path.read_bytes()[:100])
    with pytest.raises(MMAdapterError, match="not a readable safetensors file"):
        read_adapter(tmp_path / "truncated.safetensors")
    save_file(tensors, tmp_path / "nometa.safetensors")
    with pytest.raises(MMAdapterError, match="metadata format is None"):
        read_adapter(tmp_path / "nometa.safetensors")


def test_several_adapters_switch_on_one_base_without_reloading(tmp_path):
    first = save_adapter(trained(tiny_model("llama-gqa"), seed=1), tmp_path / "first.safetensors")
    second = save_adapter(trained(tiny_model("llama-gqa"), AdapterConfig(adapter_len=5, adapter_layers=3), seed=2),
                          tmp_path / "second.safetensors")
    reference = {}
    for path in (first, second):
        model = tiny_model("llama-gqa")
        load_adapter(model, path)
        reference[path.stem] = logits(model)
    base = tiny_model("llama-gqa")
    adapters = {path.stem: read_adapter(path) for path in (first, second)}
    embedding = base.model.embed_tokens.weight
    for name in ["first", "second", "first"]:
        apply_adapter(base, adapters[name])
        assert torch.equal(logits(base), reference[name]), name
    assert base.model.embed_tokens.weight is embedding  # the base was never reloaded


def test_saving_into_an_unwritable_place_is_one_line(tmp_path):
    model = trained(tiny_model("llama-gqa"))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(MMAdapterError, match="cannot write adapter file"):
        save_adapter(model, blocker / "a.safetensors")
    assert blocker.read_text() == "x"
