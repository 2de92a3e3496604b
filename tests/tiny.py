"""Tiny random models of several families, built in milliseconds for CPU tests, and adapters on them with
non-trivial values (a fresh adapter is the base itself, which would hide most mistakes)."""

from __future__ import annotations

import torch
from transformers import (
    Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config,
    Qwen2ForCausalLM,
)

COMMON = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
              max_position_embeddings=256, rope_theta=10000.0)
FAMILIES = {
    "llama-mha": (LlamaConfig, LlamaForCausalLM, dict(num_key_value_heads=4)),
    "llama-gqa": (LlamaConfig, LlamaForCausalLM, dict(num_key_value_heads=2)),
    "qwen2-gqa": (Qwen2Config, Qwen2ForCausalLM, dict(num_key_value_heads=2)),
    "mistral-gqa": (MistralConfig, MistralForCausalLM, dict(num_key_value_heads=1, sliding_window=None)),
}

# Gemma3 text: sliding and global layers alternating (a window of 4 tokens, shorter than test prompts), rotary bases
# differing per layer kind, query_pre_attn_scalar != head_dim, so each of them changes the logits.
GEMMA3 = (Gemma3TextConfig, Gemma3ForCausalLM, dict(
    num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=32, sliding_window=4,
    layer_types=["sliding_attention", "full_attention"] * 2,
    rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                     "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}}))


def randomise_norms(model, seed: int = 4):
    """Norm weights uniform in [-0.5, 0.5]: Gemma's norms start at weight 0 (scale 1 + 0), under which a missing
    ``1 +`` offset or a skipped q/k norm would change nothing a test could see."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(torch.rand(param.shape, generator=generator) - 0.5)
    return model


def tiny_model(family: str = "llama-gqa", seed: int = 0, attn_implementation: str = "sdpa", rows=None, **overrides):
    """A frozen, eval-mode tiny causal LM of ``family`` (a key of ``rows``, default FAMILIES) with
    deterministic random weights."""
    config_cls, model_cls, extra = (rows or FAMILIES)[family]
    config = config_cls(**{**COMMON, **extra, **overrides})
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    model.requires_grad_(False)
    return model


def randomise_adapter(model, seed: int = 3, gate_scale: float = 1.0, prompts: bool = True):
    """Random prompts (unless ``prompts=False``) and gates x ``gate_scale``: zero gates would hide the prompt path."""
    from mm_adapter import adapter_parameters

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for entry in adapter_parameters(model).values():
            if prompts:
                entry["prompt"].copy_(torch.randn(entry["prompt"].shape, generator=generator))
            entry["gate"].copy_(gate_scale * torch.randn(entry["gate"].shape, generator=generator))
    return model


def left_padded_batch(vocab_size: int = 97, lengths=(12, 7, 9), seed: int = 1):
    """input_ids / attention_mask / position_ids for a left-padded batch of the given lengths."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.randint(3, vocab_size, (len(lengths), width), generator=generator)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, width - length:] = 1
        ids[row, : width - length] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions


# The linear layers of a decoder layer in every tiny family: what LLaMA-Adapter V2's targets "all" adapts.
ATTENTION_AND_MLP = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def logits(model, ids, mask, positions):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=positions).logits


def v2_model(family="llama-gqa", v2=None, attn="sdpa", **adapter):
    """A tiny model with a fresh LLaMA-Adapter V2 (3 prompts on the top 2 layers unless ``adapter`` says otherwise)."""
    from mm_adapter import AdapterConfig, attach_adapter
    from mm_adapter.model.config import AdapterV2Config

    model = tiny_model(family, attn_implementation=attn)
    attach_adapter(model, AdapterConfig(**{"adapter_len": 3, "adapter_layers": 2, **adapter}), v2 or AdapterV2Config())
    return model


def randomise_v2(model, seed=5):
    """Non-trivial biases (N(0, 0.1)), scales (1 + N(0, 0.1)) and norm weights (1 + N(0, 0.1)): with b = 0, s = 1 the
    V2 path would be invisible."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if not parameter.requires_grad or name.endswith((".prompt", ".gate")):
                continue
            base = 0.0 if name.endswith(".bias") else 1.0
            parameter.copy_(base + 0.1 * torch.randn(parameter.shape, generator=generator))
    return model


def bias_scale(model) -> dict:
    """{linear module: (b, s)} as the reference takes it, read off the modules that have a V2 child."""
    return {module: (module.adapter.bias.detach(), module.adapter.scale.detach())
            for module in model.modules() if isinstance(module, torch.nn.Linear) and hasattr(module, "adapter")}
