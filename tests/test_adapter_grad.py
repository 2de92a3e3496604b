"""The training path's gradients: parity with the explicit formula, and the CPU bf16 fast path.

The forward parity tests run under ``no_grad``; training takes other branches (the token block
in fp32 on CPU for bf16 models, the transposed prompt softmax), so the prompts' and gates'
gradients are checked here against ``tests/reference.py`` and against an fp32 run.
"""

import copy

import pytest
import torch

from mm_adapter import AdapterConfig, adapter_parameters, attach_adapter
from mm_adapter.model.attention import train_token_block_in_fp32
from reference import reference_logits
from tiny import FAMILIES, left_padded_batch, randomise_adapter, tiny_model


def loss_of(logits, ids, mask):
    """A loss touching every real position, with a fixed random weighting of the vocabulary."""
    weights = torch.linspace(-1, 1, logits.shape[-1])
    return ((logits.float() * weights).sum(-1) * mask).sum()


def adapter_grads(model):
    return {f"{i}.{k}": p.grad.detach().float().clone() for i, e in adapter_parameters(model).items()
            for k, p in e.items()}


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_gradients_match_the_explicit_formula(family, attn):
    """Prompt and gate gradients of the training path equal those of tests/reference.py's explicit formula."""
    model = tiny_model(family, attn_implementation=attn)
    attach_adapter(model, AdapterConfig(adapter_len=5, adapter_layers=3))
    randomise_adapter(model, seed=5, gate_scale=0.5).train()
    ids, mask, positions = left_padded_batch()
    loss_of(model(input_ids=ids, attention_mask=mask, position_ids=positions).logits, ids, mask).backward()
    ours = adapter_grads(model)
    params = adapter_parameters(model)
    for entry in params.values():
        for p in entry.values():
            p.grad = None
    loss_of(reference_logits(model, ids, mask, positions, params), ids, mask).backward()
    expected = adapter_grads(model)
    assert ours.keys() == expected.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], expected[name], atol=1e-4, rtol=1e-3, msg=name)
    assert all(g.abs().sum() > 0 for g in ours.values())


def test_bf16_training_on_cpu_takes_the_fp32_token_block_and_keeps_gradients_close_to_fp32():
    """A bf16 base trained on CPU (fp32 adapter parameters) gets gradients within 5% of fp32's; the fp32 token
    block is taken only when training a bf16 model, never under no_grad or for fp32."""
    model = tiny_model("llama-gqa")
    attach_adapter(model, AdapterConfig(adapter_len=5, adapter_layers=3))
    randomise_adapter(model, seed=5, gate_scale=0.5).train()
    low = copy.deepcopy(model).to(torch.bfloat16)
    for entry in adapter_parameters(low).values():  # adapter parameters stay fp32 on a bf16 base
        for p in entry.values():
            p.data = p.data.float()
    ids, mask, positions = left_padded_batch()
    for m in (model, low):
        loss_of(m(input_ids=ids, attention_mask=mask, position_ids=positions).logits, ids, mask).backward()
    full, half = adapter_grads(model), adapter_grads(low)
    for name in full:
        scale = full[name].abs().max()
        assert (half[name] - full[name]).abs().max() <= 0.05 * scale, name
    q = torch.zeros(1, 2, 3, 4, dtype=torch.bfloat16, requires_grad=True)
    assert train_token_block_in_fp32(q, q, q)
    with torch.no_grad():
        assert not train_token_block_in_fp32(q, q, q)  # inference keeps the model's own kernels
    assert not train_token_block_in_fp32(q.detach().float().requires_grad_(), q, q)
