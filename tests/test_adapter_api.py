"""The adapter's public contract: trainable set, parameter count, dtypes, generation."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from mm_adapter import AdapterConfig, adapter_parameters, attach_adapter, count_trainable, is_adapter_parameter
from tiny import left_padded_batch, randomise_adapter, tiny_model


def test_gradients_reach_only_adapter_parameters():
    model = tiny_model("llama-gqa")
    attach_adapter(model, AdapterConfig(adapter_len=4, adapter_layers=2))
    randomise_adapter(model, seed=5, prompts=False)
    ids, mask, positions = left_padded_batch()
    model(input_ids=ids, attention_mask=mask, labels=ids).loss.backward()
    for name, parameter in model.named_parameters():
        if is_adapter_parameter(name):
            assert parameter.requires_grad and parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        else:
            assert not parameter.requires_grad and parameter.grad is None, name


def test_zero_gate_still_passes_gradient_to_the_gate():
    """Zero-init must not be a dead end: d loss / d gate is non-zero at gate = 0 (tanh'(0) = 1)."""
    model = tiny_model("llama-mha")
    attach_adapter(model, AdapterConfig(adapter_len=4, adapter_layers=2))
    ids, mask, _ = left_padded_batch()
    model(input_ids=ids, attention_mask=mask, labels=ids).loss.backward()
    for entry in adapter_parameters(model).values():
        assert entry["gate"].grad.abs().sum() > 0
        assert entry["prompt"].grad.abs().sum() == 0  # the prompt only matters once its gate opens


def test_llama_7b_trainable_count_is_the_papers_1229760():
    config = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=32, vocab_size=32000)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    attach_adapter(model, AdapterConfig(adapter_len=10, adapter_layers=30))
    assert count_trainable(model) == 1_229_760
    shapes = {i: (tuple(e["prompt"].shape), tuple(e["gate"].shape)) for i, e in adapter_parameters(model).items()}
    assert list(shapes) == list(range(2, 32)) and set(shapes.values()) == {((10, 4096), (32,))}


@pytest.mark.parametrize("autocast", [False, True])
def test_fp32_adapter_on_bf16_base_trains_inside_and_outside_autocast(autocast):
    model = tiny_model("llama-gqa").to(torch.bfloat16)
    attach_adapter(model, AdapterConfig(adapter_len=4, adapter_layers=2))
    randomise_adapter(model, seed=5, prompts=False)
    assert all(p.dtype == torch.float32 for e in adapter_parameters(model).values() for p in e.values())
    ids, mask, _ = left_padded_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(input_ids=ids, attention_mask=mask, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss)
    for entry in adapter_parameters(model).values():
        assert entry["prompt"].grad.dtype == torch.float32 and entry["prompt"].grad.abs().sum() > 0


def test_cached_and_uncached_greedy_decoding_agree_and_prompts_are_projected_once_per_generate():
    model = tiny_model("llama-gqa")
    attach_adapter(model, AdapterConfig(adapter_len=4, adapter_layers=3))
    randomise_adapter(model, seed=5, prompts=False)
    with torch.no_grad():
        for entry in adapter_parameters(model).values():
            entry["gate"].mul_(3)
    ids, mask, _ = left_padded_batch(lengths=(8, 5))
    modules = [model.model.layers[i].self_attn.adapter for i in adapter_parameters(model)]
    before = [m.kv_computations for m in modules]
    cached = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False, use_cache=True,
                            pad_token_id=0)
    assert [m.kv_computations - b for m, b in zip(modules, before)] == [1] * len(modules)
    uncached = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False,
                              use_cache=False, pad_token_id=0)
    assert torch.equal(cached, uncached)


def test_prompt_kv_is_recomputed_after_an_optimizer_step():
    """No stale prompt keys/values across training steps (litgpt's bug): grad-mode forwards never reuse them."""
    model = tiny_model("llama-gqa")
    attach_adapter(model, AdapterConfig(adapter_len=4, adapter_layers=2))
    randomise_adapter(model, seed=5, prompts=False)
    ids, mask, _ = left_padded_batch()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    first = model(input_ids=ids, attention_mask=mask, labels=ids)
    first.loss.backward()
    optimizer.step()
    with torch.no_grad():
        after = model(input_ids=ids, attention_mask=mask).logits
    assert not torch.allclose(first.logits.detach(), after)
