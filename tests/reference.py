"""A naive, explicit LLaMA-Adapter forward written from the paper's formula, for parity tests.

It shares no code with mm_adapter: per layer, RMSNorm -> q/k/v -> rotary (rotate-half) -> causal
+ padding masked softmax over tokens, plus act(gate_h) * softmax over the layer's prompts, whose
keys/values come from the same frozen projections without rotary; heads repeated for GQA.
"""

from __future__ import annotations

import math

import torch


def rms_norm(x, weight, eps):
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotary(x, positions, theta):
    """x: (batch, heads, seq, dim); positions: (batch, seq)."""
    dim = x.shape[-1]
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    angles = positions.to(torch.float64)[..., None] * inv_freq
    emb = torch.cat((angles, angles), dim=-1)[:, None]
    return x * emb.cos().to(x.dtype) + rotate_half(x) * emb.sin().to(x.dtype)


def linear(module, x):
    return x @ module.weight.T + (module.bias if module.bias is not None else 0)


def reference_logits(model, input_ids, attention_mask, position_ids, adapters, gate_activation="tanh"):
    """adapters: {layer_index: {"prompt": (L, hidden), "gate": (heads,)}} -> logits (batch, seq, vocab)."""
    config = model.config
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = config.hidden_size // heads
    theta = config.rope_parameters["rope_theta"]
    eps = config.rms_norm_eps
    batch, seq = input_ids.shape
    x = model.model.embed_tokens.weight[input_ids]
    causal = torch.ones(seq, seq, dtype=torch.bool).tril()
    allowed = causal[None] & attention_mask.bool()[:, None, :]  # (batch, query, key)
    allowed |= torch.eye(seq, dtype=torch.bool)  # pad rows see themselves only (no NaN); real rows are unaffected
    for index, layer in enumerate(model.model.layers):
        attn = layer.self_attn
        h = rms_norm(x, layer.input_layernorm.weight, eps)
        q = linear(attn.q_proj, h).view(batch, seq, heads, head_dim).transpose(1, 2)
        k = linear(attn.k_proj, h).view(batch, seq, kv_heads, head_dim).transpose(1, 2)
        v = linear(attn.v_proj, h).view(batch, seq, kv_heads, head_dim).transpose(1, 2)
        q, k = rotary(q, position_ids, theta), rotary(k, position_ids, theta)
        group = heads // kv_heads
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim)
        scores = scores.masked_fill(~allowed[:, None], float("-inf"))
        out = scores.softmax(-1) @ v
        if index in adapters:
            prompt, gate = adapters[index]["prompt"], adapters[index]["gate"]
            kp = linear(attn.k_proj, prompt).view(-1, kv_heads, head_dim).transpose(0, 1).repeat_interleave(group, 0)
            vp = linear(attn.v_proj, prompt).view(-1, kv_heads, head_dim).transpose(0, 1).repeat_interleave(group, 0)
            prompt_scores = q @ kp.transpose(-1, -2) / math.sqrt(head_dim)  # no mask: every token sees all prompts
            g = torch.tanh(gate) if gate_activation == "tanh" else gate
            out = out + g.view(1, heads, 1, 1) * (prompt_scores.softmax(-1) @ vp)
        out = out.transpose(1, 2).reshape(batch, seq, -1)
        x = x + linear(attn.o_proj, out)
        h = rms_norm(x, layer.post_attention_layernorm.weight, eps)
        mlp = layer.mlp
        x = x + linear(mlp.down_proj, torch.nn.functional.silu(linear(mlp.gate_proj, h)) * linear(mlp.up_proj, h))
    x = rms_norm(x, model.model.norm.weight, eps)
    return x @ model.lm_head.weight.T
