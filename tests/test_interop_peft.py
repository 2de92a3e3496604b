"""PEFT adaption_prompt: adapters made by PEFT itself give PEFT's logits on our stack, ours exported
to PEFT give our logits in PEFT, and what PEFT cannot express is refused by layer and spread; on a base
whose o_proj has a bias, what PEFT computes differently (that bias a second time) is named."""

import json
import logging

import pytest
import torch
from peft import AdaptionPromptConfig, PeftModel, get_peft_model
from safetensors import safe_open
from safetensors.torch import save_file

from mm_adapter import AdapterConfig, MMAdapterError, adapter_parameters, attach_adapter
from mm_adapter.interop import export_peft, import_peft, load_foreign_adapter
from tiny import left_padded_batch, tiny_model

TOLERANCE = dict(atol=1e-5, rtol=1e-5)  # fp32, same base weights; observed differences ~2e-7


def logits(model):
    ids, mask, positions = left_padded_batch()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    return out[mask.bool()]  # padded rows are not outputs either implementation promises


def peft_adapter(family, folder, seed=4, base=None, **save):
    """A PEFT adaption_prompt adapter with random non-zero prompts and gates, saved by PEFT (on ``base`` if given)."""
    model = get_peft_model(base or tiny_model(family), AdaptionPromptConfig(adapter_len=3, adapter_layers=2,
                                                                            task_type="CAUSAL_LM"))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "adaption_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
    model.eval()
    model.save_pretrained(folder, **save)
    return model


@pytest.mark.parametrize("family", ["llama-mha", "mistral-gqa"])
def test_peft_made_adapter_gives_peft_logits(tmp_path, family):
    peft_model = peft_adapter(family, tmp_path / "peft")
    ours = tiny_model(family)
    adapter = load_foreign_adapter(ours, "peft", tmp_path / "peft")
    assert adapter.config.gate_activation == "identity" and sorted(adapter.layers) == [2, 3]
    expected = logits(peft_model)
    torch.testing.assert_close(logits(ours), expected, **TOLERANCE)
    assert (expected - logits(tiny_model(family))).abs().max() > 1e-2


def test_peft_pickled_weights_are_read_safely(tmp_path):
    peft_model = peft_adapter("llama-gqa", tmp_path / "peft", safe_serialization=False)
    assert (tmp_path / "peft" / "adapter_model.bin").is_file()
    ours = tiny_model("llama-gqa")
    load_foreign_adapter(ours, "peft", tmp_path / "peft")
    torch.testing.assert_close(logits(ours), logits(peft_model), **TOLERANCE)


def trained(family, activation, gates, seed=6):
    model = tiny_model(family)
    attach_adapter(model, AdapterConfig(adapter_len=3, adapter_layers=2, gate_activation=activation))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for index, entry in adapter_parameters(model).items():
            entry["prompt"].copy_(torch.randn(entry["prompt"].shape, generator=generator))
            entry["gate"].copy_(gates[index])
    return model


@pytest.mark.parametrize("activation", ["identity", "tanh"])
def test_export_round_trip_through_peft_from_pretrained(tmp_path, activation):
    model = trained("llama-gqa", activation, {2: torch.full((4,), 0.8), 3: torch.full((4,), -1.3)})
    folder = export_peft(model, tmp_path / "peft")
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert json.loads((folder / "adapter_config.json").read_text())["adapter_layers"] == 2
    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as handle:
        gate = handle.get_tensor("base_model.model.model.layers.3.self_attn.adaption_gate")
    expected_gate = torch.tanh(torch.tensor(-1.3)) if activation == "tanh" else torch.tensor(-1.3)
    torch.testing.assert_close(gate, expected_gate.reshape(1))
    peft_model = PeftModel.from_pretrained(tiny_model("llama-gqa"), folder).eval()
    torch.testing.assert_close(logits(peft_model), logits(model), **TOLERANCE)
    back = tiny_model("llama-gqa")
    load_foreign_adapter(back, "peft", folder)  # and back again: identity gates of the same effective value
    torch.testing.assert_close(logits(back), logits(model), **TOLERANCE)


def test_export_refuses_what_peft_cannot_express(tmp_path):
    """Per-head gates that differ (one line naming the layer and spread, pointing to gate_granularity="layer"), a
    model type PEFT does not know, an existing folder: refused, nothing written."""
    differing = trained("llama-gqa", "tanh", {2: torch.full((4,), 0.5), 3: torch.tensor([0.1, 0.1, 0.4, 0.1])})
    with pytest.raises(MMAdapterError, match=r"^layer 3: per-head gates differ .* spread 0\.28\); PEFT has one gate "
                                             r"per layer, .* train with gate_granularity=\"layer\" "
                                             r"\(--gate-granularity layer\)") as error:
        export_peft(differing, tmp_path / "out")
    assert "\n" not in str(error.value) and not (tmp_path / "out").exists()
    qwen = tiny_model("qwen2-gqa")
    attach_adapter(qwen, AdapterConfig(adapter_len=3, adapter_layers=2))
    with pytest.raises(MMAdapterError, match="supports model types llama, mistral, not 'qwen2'"):
        export_peft(qwen, tmp_path / "out")
    (tmp_path / "taken").mkdir()
    same = trained("llama-gqa", "identity", {2: torch.zeros(4), 3: torch.zeros(4)})
    with pytest.raises(MMAdapterError, match="already exists"):
        export_peft(same, tmp_path / "taken")
    assert export_peft(same, tmp_path / "taken", overwrite=True) == tmp_path / "taken"


def biased(family="llama-gqa"):
    """A tiny Llama with attention_bias=True and random non-zero o_proj biases (transformers initialises them to 0)."""
    model = tiny_model(family, attention_bias=True)
    generator = torch.Generator().manual_seed(8)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.bias.copy_(torch.randn(64, generator=generator))
    return model


def test_o_proj_bias_is_named_on_export_and_import(tmp_path, caplog):
    """PEFT adds the prompt output after o_proj, so on a base whose o_proj has a bias its logits are ours plus that
    bias once more per adapted layer (checked against PEFT's own model); export refuses such an adapter in one line,
    and import says in one logged line that it computes the formula, not PEFT's numbers."""
    peft_model = peft_adapter("llama-gqa", tmp_path / "peft", base=biased())
    ours = biased()
    with caplog.at_level(logging.WARNING, logger="mm_adapter.interop.peft"):
        load_foreign_adapter(ours, "peft", tmp_path / "peft")
    (record,) = caplog.records
    assert "\n" not in record.getMessage()
    assert "o_proj has a bias in adapted layer(s) 2-3" in record.getMessage()
    assert "so on this base its logits differ from PEFT's by the second bias" in record.getMessage()
    expected = logits(peft_model)
    assert (logits(ours) - expected).abs().max() > 1e-2  # PEFT's numbers are not the formula's here
    layers = ours.model.layers
    hooks = [layers[i].self_attn.o_proj.register_forward_hook(lambda m, _, out: out + m.bias) for i in (2, 3)]
    torch.testing.assert_close(logits(ours), expected, **TOLERANCE)  # and the second bias is all that differs
    for hook in hooks:
        hook.remove()
    with pytest.raises(MMAdapterError, match=r"^o_proj has a bias in adapted layer\(s\) 2-3 \(largest \|value\| "
                                             r"[\d.]+\), and PEFT adds the prompt output after o_proj, so it adds that "
                                             r"bias a second time in each adapted layer, even with zero gates; PEFT would "
                                             r"not compute this adapter, so it is not exported$") as error:
        export_peft(ours, tmp_path / "out")
    assert "\n" not in str(error.value) and not (tmp_path / "out").exists()
    zero = tiny_model("llama-gqa", attention_bias=True)  # a bias of zeros adds nothing: exported, PEFT agrees
    attach_adapter(zero, AdapterConfig(adapter_len=3, adapter_layers=2, gate_granularity="layer"))
    torch.testing.assert_close(logits(PeftModel.from_pretrained(tiny_model("llama-gqa", attention_bias=True),
                                                                export_peft(zero, tmp_path / "zero")).eval()),
                               logits(zero), **TOLERANCE)


def test_peft_bad_input_names_the_key_or_size(tmp_path):
    folder = tmp_path / "peft"
    peft_adapter("llama-gqa", folder)
    weights = folder / "adapter_model.safetensors"
    with safe_open(str(weights), "pt") as handle:
        good = {key: handle.get_tensor(key) for key in handle.keys()}
    model = tiny_model("llama-gqa")
    prefix = "base_model.model.model.layers"

    def refused(tensors, match, config=None):
        save_file(tensors, weights)
        if config is not None:
            (folder / "adapter_config.json").write_text(json.dumps(config))
        with pytest.raises(MMAdapterError, match=match) as error:
            import_peft(model, folder)
        assert "\n" not in str(error.value)

    refused({k: v for k, v in good.items() if k != f"{prefix}.2.self_attn.adaption_gate"},
            r"missing key for layer 2: \.\.\.layers\.2\.self_attn\.adaption_gate")
    refused(dict(good, **{f"{prefix}.3.self_attn.adaption_bias": torch.zeros(1)}),
            r"unexpected key 'base_model.model.model.layers.3.self_attn.adaption_bias'")
    refused(dict(good, **{f"{prefix}.3.self_attn.adaption_prompt": torch.zeros(1, 3, 32)}),
            r"layers.3.self_attn.adaption_prompt has shape \[1, 3, 32\], expected \[1, 3, 64\]")
    moved = {k.replace("layers.2.", "layers.5."): v for k, v in good.items()}
    refused(moved, r"layers.5.self_attn.adaption_prompt is for layer 5, but the base has only 4 layers")
    config = json.loads((folder / "adapter_config.json").read_text())
    refused(good, r"holds 2 adapted layers, but adapter_config.json says adapter_layers=3",
            dict(config, adapter_layers=3))
    refused(good, r"peft_type is 'LORA', expected 'ADAPTION_PROMPT'", dict(config, peft_type="LORA"))
    (folder / "adapter_config.json").write_text(json.dumps(config))
    save_file(good, weights)
    weights.write_bytes(weights.read_bytes()[:150])
    with pytest.raises(MMAdapterError, match="truncated or corrupt"):
        import_peft(model, folder)
