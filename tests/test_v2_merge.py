"""Merging LLaMA-Adapter V2's bias/scale into the base's linear weights: equal logits merged and unmerged, unmerge
restores every weight bit for bit (with a layer that has its own bias, Qwen2's q/k/v, and ones without), a v1
adapter has nothing to merge."""

from __future__ import annotations

import pytest
import torch

from mm_adapter import attach_adapter, detach_adapter
from mm_adapter.errors import MMAdapterError
from mm_adapter.model.adapter import adapter_v2_state
from mm_adapter.model.config import AdapterConfig
from mm_adapter.model.v2_merge import merge_v2, unmerge_v2, v2_state_to_merge
from tiny import left_padded_batch, logits, randomise_adapter, randomise_v2, tiny_model, v2_model

# fp32: merged, s * (W x) becomes (s W) x and s * (b_W + b) one bias, so only the order of float32 roundings changes
# (float32 eps 1.2e-7 per product); through the tiny models' layers that stays under 1e-5 of the logits' size
# (seen: 3.6e-6 relative, 1.0e-5 absolute on logits of about 3).
TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}


def linear_state(model) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in model.state_dict().items() if ".adapter." not in name}


@pytest.mark.parametrize("family", ["llama-gqa", "qwen2-gqa"])
def test_merge_keeps_the_logits_and_unmerge_restores_the_weights_exactly(family):
    """Random non-trivial b, s, norms, prompts and gates: the merged model (hooks off) gives the V2 model's logits; its
    weights did change (diag(s) W, s * (b_W + b), a bias created where the layer had none); unmerge puts back every
    weight and bias (or none) exactly, and the logits bit for bit."""
    model = randomise_v2(randomise_adapter(v2_model(family)))
    batch = left_padded_batch()
    before, weights = logits(model, *batch), linear_state(model)
    state = v2_state_to_merge(model)
    had_bias = {name: module.bias is not None for name, module in state.linears.items()}
    assert any(had_bias.values()) == (family == "qwen2-gqa") and not all(had_bias.values())
    merge_v2(state)
    assert not state.linear_hooks and all(module.bias is not None for module in state.linears.values())
    for name, module in state.linears.items():
        scale, added = module.adapter.scale.detach(), module.adapter.bias.detach()
        torch.testing.assert_close(module.weight, scale[:, None] * weights[f"{name}.weight"])
        own = weights[f"{name}.bias"] if had_bias[name] else 0.0
        torch.testing.assert_close(module.bias, scale * (added + own))
    merged = logits(model, *batch)
    assert not torch.equal(merged, logits(tiny_model(family), *batch))  # the V2 part is in there
    torch.testing.assert_close(merged, before, **TOLERANCE)
    unmerge_v2(state)
    after = linear_state(model)
    assert after.keys() == weights.keys() and all(torch.equal(after[k], weights[k]) for k in weights)
    assert {name: module.bias is not None for name, module in state.linears.items()} == had_bias
    assert torch.equal(logits(model, *batch), before)


def test_detach_while_merged_gives_the_base_back():
    """detach_adapter on a merged model unmerges first: exactly the base's weights and logits."""
    base = tiny_model("qwen2-gqa")
    model = randomise_v2(randomise_adapter(v2_model("qwen2-gqa")))
    merge_v2(adapter_v2_state(model))
    detach_adapter(model)
    batch = left_padded_batch()
    assert torch.equal(logits(model, *batch), logits(base, *batch))


def test_twice_and_v1_are_one_line():
    """A v1 adapter has no V2 part to merge; merging twice or unmerging unmerged is refused."""
    v1 = attach_adapter(tiny_model(), AdapterConfig(adapter_len=3, adapter_layers=2))
    with pytest.raises(MMAdapterError, match="no LLaMA-Adapter V2 part"):
        v2_state_to_merge(v1)
    state = adapter_v2_state(v2_model())
    with pytest.raises(MMAdapterError, match="not merged"):
        unmerge_v2(state)
    merge_v2(state)
    with pytest.raises(MMAdapterError, match="already merged"):
        merge_v2(state)
