"""``gate_granularity="layer"``: one gate per layer (PEFT's ``adaption_gate``), so a trained adapter exports to PEFT
and reloads there with our logits; adapter files hold the gate shape their config says, and old files still load."""

import json

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open
from safetensors.torch import save_file

from mm_adapter import (
    AdapterConfig, MMAdapterError, adapter_parameters, attach_adapter, count_trainable, load_adapter, read_adapter,
    save_adapter,
)
from mm_adapter.errors import ConfigError
from mm_adapter.interop import export_peft, import_peft
from mm_adapter.model.adapter import trainable_parameters
from tiny import left_padded_batch, tiny_model

TOLERANCE = dict(atol=1e-5, rtol=1e-5)  # fp32, same base weights
LAYER = AdapterConfig(adapter_len=3, adapter_layers=2, gate_granularity="layer", gate_activation="identity")


def logits(model):
    ids, mask, positions = left_padded_batch()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    return out[mask.bool()]


def trained(config, steps=5, seed=2):
    """A tiny Llama (GQA) whose adapter took ``steps`` AdamW steps of next-token loss on random text."""
    model = tiny_model("llama-gqa")
    attach_adapter(model, config)
    optimizer = torch.optim.AdamW([p for _, p in trainable_parameters(model)], lr=0.05)
    tokens = torch.randint(3, 97, (4, 12), generator=torch.Generator().manual_seed(seed))
    for _ in range(steps):
        model(input_ids=tokens, labels=tokens).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model


def test_layer_granularity_trains_one_gate_per_layer():
    """"layer" gives each adapted layer one gate parameter, "head" (the default, the paper's) one per head."""
    assert AdapterConfig().gate_granularity == "head"
    per_layer = tiny_model("llama-gqa")
    attach_adapter(per_layer, LAYER)
    assert [tuple(entry["gate"].shape) for entry in adapter_parameters(per_layer).values()] == [(1,), (1,)]
    assert count_trainable(per_layer) == 2 * (3 * 64 + 1)
    per_head = tiny_model("llama-gqa")
    attach_adapter(per_head, AdapterConfig(adapter_len=3, adapter_layers=2))
    assert count_trainable(per_head) == 2 * (3 * 64 + 4)


@pytest.mark.parametrize("activation", ["identity", "tanh"])
def test_a_trained_layer_adapter_exports_to_peft_with_equal_logits(tmp_path, activation):
    """After real training steps, export_peft writes a folder that PeftModel.from_pretrained loads on the same base
    with our logits; PEFT's raw gate is the effective one (tanh(g) for "tanh": exact at inference), and importing
    the folder back gives the same adapter function with PEFT's parameterisation."""
    config = AdapterConfig(adapter_len=3, adapter_layers=2, gate_granularity="layer", gate_activation=activation)
    model = trained(config)
    gates = {index: entry["gate"].detach().clone() for index, entry in adapter_parameters(model).items()}
    assert all(gate.abs().item() > 1e-3 for gate in gates.values())  # training moved the gates off zero
    folder = export_peft(model, tmp_path / "peft")
    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as handle:
        exported = handle.get_tensor("base_model.model.model.layers.3.self_attn.adaption_gate")
    torch.testing.assert_close(exported, torch.tanh(gates[3]) if activation == "tanh" else gates[3])
    peft_model = PeftModel.from_pretrained(tiny_model("llama-gqa"), folder).eval()
    expected = logits(model)
    torch.testing.assert_close(logits(peft_model), expected, **TOLERANCE)
    assert (expected - logits(tiny_model("llama-gqa"))).abs().max() > 1e-3  # the adapter changes the outputs
    back = import_peft(tiny_model("llama-gqa"), folder)
    assert (back.config.gate_granularity, back.config.gate_activation) == ("layer", "identity")


def test_files_hold_the_gate_shape_of_their_config(tmp_path):
    """A "layer" adapter saves layers.{i}.gate as [1] and reads back bit-exact; a per-head gate under a "layer"
    config is refused naming the key; a file written before gate_granularity existed loads as per-head."""
    model = trained(LAYER, steps=2)
    path = save_adapter(model, tmp_path / "layer.safetensors")
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    assert tuple(tensors["layers.3.gate"].shape) == (1,)
    assert json.loads(metadata["config"])["gate_granularity"] == "layer"
    target = tiny_model("llama-gqa")
    load_adapter(target, path)
    assert torch.equal(logits(target), logits(model))

    save_file(dict(tensors, **{"layers.3.gate": torch.zeros(4)}), tmp_path / "heads.safetensors", metadata=metadata)
    with pytest.raises(MMAdapterError, match=r"layers.3.gate has shape \[4\], expected \[1\]"):
        read_adapter(tmp_path / "heads.safetensors")

    old_config = {k: v for k, v in json.loads(metadata["config"]).items() if k != "gate_granularity"}
    old = dict(tensors, **{f"layers.{i}.gate": torch.full((4,), 0.3) for i in (2, 3)})
    save_file(old, tmp_path / "old.safetensors", metadata=dict(metadata, config=json.dumps(old_config)))
    assert read_adapter(tmp_path / "old.safetensors").config.gate_granularity == "head"


def test_an_unknown_granularity_is_refused_naming_the_field():
    """Only head and layer exist; anything else is one ConfigError naming gate_granularity."""
    with pytest.raises(ConfigError, match="gate_granularity: must be one of head, layer, got 'channel'"):
        AdapterConfig(gate_granularity="channel")
