"""LLaMA-Adapter V2's forward (--method llama-adapter-v2): a fresh adapter is the base bit for bit (on an fp32 and a
bf16 base, SDPA and eager attention); with random prompts, gates, biases, scales and norms the logits equal the
explicit formula of tests/reference.py (``y = s * (W x + b)`` on exactly the target layers, the trained norms); detach
gives the base back; early fusion adds an image's offset to the prompts of the early adapted layers only."""

from __future__ import annotations

import pytest
import torch

from mm_adapter import AdapterConfig, adapter_parameters, attach_adapter, detach_adapter
from mm_adapter.methods.attach import attach_method
from mm_adapter.methods.config import TuningConfig
from mm_adapter.model.config import AdapterV2Config
from reference import reference_logits
from tiny import (
    ATTENTION_AND_MLP, bias_scale, left_padded_batch, logits, randomise_adapter, randomise_v2, tiny_model, v2_model,
)

V2_FAMILIES = ["llama-mha", "llama-gqa", "qwen2-gqa"]


@pytest.mark.parametrize("family", V2_FAMILIES)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_fresh_v2_adapter_is_exactly_the_base_model(family, attn):
    """b = 0, s = 1, gates 0, norms as they were: the logits are the base's bit for bit."""
    model = tiny_model(family, attn_implementation=attn)
    ids, mask, positions = left_padded_batch()
    base = logits(model, ids, mask, positions)
    attach_adapter(model, AdapterConfig(adapter_len=3, adapter_layers=3), AdapterV2Config())
    assert torch.equal(logits(model, ids, mask, positions), base)


@pytest.mark.parametrize("family", ["llama-gqa", "qwen2-gqa"])
def test_on_a_bf16_base_the_trained_norms_are_fp32_and_the_forward_stays_bf16(family):
    """As the trainer builds it on a bf16 base (autocast), the V2 parameters are fp32 master weights; a fresh adapter
    still gives the base's bf16 logits exactly, outside autocast (validation, generation) as well as inside."""
    model = tiny_model(family).to(torch.bfloat16)
    ids, mask, positions = left_padded_batch()
    base = logits(model, ids, mask, positions)
    tuned = attach_method(model, TuningConfig(method="llama-adapter-v2"), AdapterConfig(adapter_len=3,
                                                                                         adapter_layers=2))
    assert {p.dtype for p in tuned.model.parameters() if p.requires_grad} == {torch.float32}
    assert torch.equal(logits(model, ids, mask, positions), base)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(logits(model, ids, mask, positions), base)


@pytest.mark.parametrize("family", V2_FAMILIES)
@pytest.mark.parametrize("targets", ["all", "q_proj,v_proj,down_proj"])
def test_parity_with_explicit_formula(family, targets):
    """Random prompts, gates, biases, scales and norm weights: our logits equal tests/reference.py's forward with
    ``y = s * (W x + b)`` on exactly the target layers (prompt keys/values included) and the trained norms."""
    model = v2_model(family, AdapterV2Config(targets=targets), adapter_layers=3)
    randomise_adapter(model)
    randomise_v2(model)
    ids, mask, positions = left_padded_batch()
    ours = logits(model, ids, mask, positions)
    params = {i: {k: p.detach() for k, p in entry.items()} for i, entry in adapter_parameters(model).items()}
    wanted = ATTENTION_AND_MLP if targets == "all" else tuple(targets.split(","))
    adapted = bias_scale(model)
    assert sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if m in adapted}) == sorted(wanted)
    assert len(adapted) == 4 * len(wanted)  # every decoder layer, not only the prompted ones
    with torch.no_grad():
        expected = reference_logits(model, ids, mask, positions, params, bias_scale=adapted)
        without = reference_logits(model, ids, mask, positions, params)
    real = mask.bool()
    torch.testing.assert_close(ours[real], expected[real], atol=2e-5, rtol=1e-4)
    assert (ours[real] - without[real]).abs().max() > 1e-2  # the bias/scale part is far beyond the tolerance


def test_trained_norms_enter_the_forward_and_detach_restores_the_base():
    """A changed norm weight changes the logits (the norms are the base's own modules), and detach gives the base
    its norms back: the base function exactly again."""
    model = tiny_model("qwen2-gqa")
    ids, mask, positions = left_padded_batch()
    base = logits(model, ids, mask, positions)
    attach_adapter(model, AdapterConfig(adapter_len=3, adapter_layers=2), AdapterV2Config())
    with torch.no_grad():
        model.model.norm.weight.mul_(1.5)
    assert not torch.equal(logits(model, ids, mask, positions), base)
    detach_adapter(model)
    assert torch.equal(logits(model, ids, mask, positions), base)
    assert not any(p.requires_grad for p in model.parameters())
    assert not any(hasattr(m, "adapter") for m in model.modules())


@pytest.mark.parametrize("fusion", [1, 2])
def test_early_fusion_adds_the_visual_offset_to_the_early_adapted_layers_only(fusion):
    """With a per-row visual offset (what the projection makes of an image), the logits equal the explicit formula
    whose prompts are prompt + offset in the bottom ``fusion`` adapted layers and the plain prompts above; adding it
    to every adapted layer (v1's fusion) would give other logits."""
    from mm_adapter.model.adapter import prompt_offset

    model = randomise_v2(randomise_adapter(v2_model("qwen2-gqa", AdapterV2Config(fusion_layers=fusion),
                                                    adapter_layers=3)))
    ids, mask, positions = left_padded_batch(lengths=(9,))
    offset = torch.randn(1, 64, generator=torch.Generator().manual_seed(9))
    with prompt_offset(model, offset):
        ours = logits(model, ids, mask, positions)
    params = {i: {k: p.detach() for k, p in entry.items()} for i, entry in adapter_parameters(model).items()}
    early = sorted(params)[:fusion]
    fused = {i: {**entry, "prompt": entry["prompt"] + offset[0] if i in early else entry["prompt"]}
             for i, entry in params.items()}
    everywhere = {i: {**entry, "prompt": entry["prompt"] + offset[0]} for i, entry in params.items()}
    with torch.no_grad():
        expected = reference_logits(model, ids, mask, positions, fused, bias_scale=bias_scale(model))
        v1_fusion = reference_logits(model, ids, mask, positions, everywhere, bias_scale=bias_scale(model))
    torch.testing.assert_close(ours, expected, atol=2e-5, rtol=1e-4)
    assert (ours - v1_fusion).abs().max() > 1e-2
