"""The adapter's math: zero-init identity and parity with the explicit formula (tests/reference.py)."""

import pytest
import torch
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

from mm_adapter import AdapterConfig, adapter_parameters, attach_adapter, detach_adapter
from reference import reference_logits
from tiny import FAMILIES, left_padded_batch, logits, randomise_adapter, tiny_model


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_zero_init_is_exactly_the_base_model(family, attn):
    model = tiny_model(family, attn_implementation=attn)
    ids, mask, positions = left_padded_batch()
    base = logits(model, ids, mask, positions)
    attach_adapter(model, AdapterConfig(adapter_len=5, adapter_layers=3))
    assert torch.equal(logits(model, ids, mask, positions), base)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("activation,granularity", [("tanh", "head"), ("identity", "head"), ("identity", "layer")])
def test_parity_with_explicit_formula_under_left_padding(family, attn, activation, granularity):
    """Our logits equal the explicit formula's, for either gate activation, with per-head gates and with one gate
    per layer (broadcast to every head)."""
    model = tiny_model(family, attn_implementation=attn)
    attach_adapter(model, AdapterConfig(adapter_len=5, adapter_layers=3, gate_activation=activation,
                                        gate_granularity=granularity))
    randomise_adapter(model)
    ids, mask, positions = left_padded_batch()
    ours = logits(model, ids, mask, positions)
    params = {i: {k: p.detach() for k, p in entry.items()} for i, entry in adapter_parameters(model).items()}
    with torch.no_grad():
        expected = reference_logits(model, ids, mask, positions, params, activation)
    real = mask.bool()
    torch.testing.assert_close(ours[real], expected[real], atol=2e-5, rtol=1e-4)
    # the comparison is not vacuous: the adapter moved the logits far beyond the tolerance
    detach_adapter(model)
    assert (logits(model, ids, mask, positions)[real] - expected[real]).abs().max() > 1e-2


def test_adapted_layers_are_the_top_ones_and_too_many_is_an_error():
    model = tiny_model("llama-gqa")
    attach_adapter(model, AdapterConfig(adapter_len=2, adapter_layers=3))
    assert sorted(adapter_parameters(model)) == [1, 2, 3]
    other = tiny_model("llama-gqa")
    with pytest.raises(ValueError, match="adapter_layers=5 but the model has only 4 decoder layers"):
        attach_adapter(other, AdapterConfig(adapter_layers=5))


def test_mask_function_is_registered_with_the_attention_function():
    model = tiny_model("llama-gqa")
    attach_adapter(model, AdapterConfig(adapter_len=2, adapter_layers=1))
    name = model.config._attn_implementation
    assert name.startswith("mm_adapter_")
    assert name in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping


def test_detach_restores_the_base_function_and_implementation():
    model = tiny_model("qwen2-gqa")
    ids, mask, positions = left_padded_batch()
    base = logits(model, ids, mask, positions)
    attach_adapter(model, AdapterConfig(adapter_len=3, adapter_layers=2))
    randomise_adapter(model)
    detach_adapter(model)
    assert model.config._attn_implementation == "sdpa"
    assert torch.equal(logits(model, ids, mask, positions), base)
    assert not any(p.requires_grad for p in model.parameters())
