"""A naive, explicit LLaMA-Adapter forward written from the paper's formula, for parity tests.

It shares no code with mm_adapter: per layer, RMSNorm -> q/k/v -> rotary (rotate-half) -> causal
+ padding masked softmax over tokens, plus act(gate_h) * softmax over the layer's prompts, whose
keys/values come from the same frozen projections without rotary; heads repeated for GQA.

Family differences, written out from the transformers sources rather than shared with mm_adapter:
Qwen3 RMS-normalises queries and keys per head before rotary (q_norm / k_norm; prompt keys get
k_norm too); Gemma2 scales embeddings by sqrt(hidden), its norms multiply by (1 + weight), it has
sandwich norms around attention and MLP, a tanh-GELU MLP, query_pre_attn_scalar, tanh softcaps on
attention scores (prompt scores too) and on the final logits; Gemma3 text has Gemma2's embedding
scale, norms, sandwich norms, MLP and query_pre_attn_scalar, plus Qwen3-style q/k norms (with the
1 + weight scale), a rotary base per layer kind (``rope_parameters[layer_type]``) and no attention
softcap (transformers' Gemma3 attention never passes one); sliding-window layers (Mistral, Gemma2,
Gemma3) mask tokens further than the window back, never prompts. ``prompt_key_norm`` and
``prompt_softcap`` switch the prompt-side family handling off, to show the tests would notice.
"""

from __future__ import annotations

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


def _window(config, index):
    """The sliding window of layer ``index``, or None (index-based, like transformers' overlay)."""
    if config.model_type == "mistral":
        return config.sliding_window
    layer_types = getattr(config, "layer_types", None)
    return config.sliding_window if layer_types and layer_types[index] == "sliding_attention" else None


def _cap(scores, cap):
    return scores if cap is None else cap * torch.tanh(scores / cap)


def reference_logits(model, input_ids, attention_mask, position_ids, adapters, gate_activation="tanh",
                     prompt_key_norm=True, prompt_softcap=True, bias_scale=None):
    """adapters: {layer_index: {"prompt": (L, hidden), "gate": (heads,) or (1,) for all heads}} -> logits.

    bias_scale: {linear module: (b, s)}, LLaMA-Adapter V2's ``y = s * (W x + b)`` on those layers, prompt keys and
    values included (litgpt's AdapterV2Linear projects its prefix through the same layer)."""

    def lin(module, x):
        y = linear(module, x)
        if bias_scale and module in bias_scale:
            b, s = bias_scale[module]
            y = s * (y + b)
        return y

    config = model.config
    gemma = config.model_type in ("gemma2", "gemma3_text")
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    scale = (config.query_pre_attn_scalar if gemma else head_dim) ** -0.5
    softcap = None if config.model_type == "gemma3_text" else getattr(config, "attn_logit_softcapping", None)
    eps = config.rms_norm_eps

    def theta(index):
        if config.model_type == "gemma3_text":
            return config.rope_parameters[config.layer_types[index]]["rope_theta"]
        return config.rope_parameters["rope_theta"]

    def norm(x, module):
        return rms_norm(x, 1 + module.weight if gemma else module.weight, eps)

    batch, seq = input_ids.shape
    x = model.model.embed_tokens.weight[input_ids]
    if gemma:
        x = x * torch.tensor(config.hidden_size**0.5, dtype=x.dtype)
    index_q, index_k = torch.arange(seq)[:, None], torch.arange(seq)[None, :]
    for index, layer in enumerate(model.model.layers):
        attn = layer.self_attn
        allowed = (index_k <= index_q)[None] & attention_mask.bool()[:, None, :]  # (batch, query, key)
        window = _window(config, index)
        if window is not None:
            allowed &= (index_k > index_q - window)[None]
        allowed |= torch.eye(seq, dtype=torch.bool)  # pad rows see themselves only (no NaN); real rows are unaffected
        h = norm(x, layer.input_layernorm)
        q = lin(attn.q_proj, h).view(batch, seq, heads, head_dim)
        k = lin(attn.k_proj, h).view(batch, seq, kv_heads, head_dim)
        v = lin(attn.v_proj, h).view(batch, seq, kv_heads, head_dim).transpose(1, 2)
        if hasattr(attn, "k_norm"):  # Qwen3, Gemma3: per-head RMSNorm before rotary
            q, k = norm(q, attn.q_norm), norm(k, attn.k_norm)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        q, k = rotary(q, position_ids, theta(index)), rotary(k, position_ids, theta(index))
        group = heads // kv_heads
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        scores = _cap(q @ k.transpose(-1, -2) * scale, softcap)
        scores = scores.masked_fill(~allowed[:, None], float("-inf"))
        out = scores.softmax(-1) @ v
        if index in adapters:
            prompt, gate = adapters[index]["prompt"], adapters[index]["gate"]
            kp = lin(attn.k_proj, prompt).view(-1, kv_heads, head_dim)
            if prompt_key_norm and hasattr(attn, "k_norm"):
                kp = norm(kp, attn.k_norm)
            kp = kp.transpose(0, 1).repeat_interleave(group, 0)
            vp = lin(attn.v_proj, prompt).view(-1, kv_heads, head_dim).transpose(0, 1).repeat_interleave(group, 0)
            prompt_scores = q @ kp.transpose(-1, -2) * scale  # no mask: every token sees all prompts
            if prompt_softcap:
                prompt_scores = _cap(prompt_scores, softcap)
            g = torch.tanh(gate) if gate_activation == "tanh" else gate
            out = out + g.view(1, -1, 1, 1).expand(1, heads, 1, 1) * (prompt_scores.softmax(-1) @ vp)
        out = lin(attn.o_proj, out.transpose(1, 2).reshape(batch, seq, -1))
        mlp = layer.mlp
        if gemma:
            x = x + norm(out, layer.post_attention_layernorm)
            h = norm(x, layer.pre_feedforward_layernorm)
            act = torch.nn.functional.gelu(lin(mlp.gate_proj, h), approximate="tanh")
            x = x + norm(lin(mlp.down_proj, act * lin(mlp.up_proj, h)), layer.post_feedforward_layernorm)
        else:
            x = x + out
            h = norm(x, layer.post_attention_layernorm)
            x = x + lin(mlp.down_proj, torch.nn.functional.silu(lin(mlp.gate_proj, h)) * lin(mlp.up_proj, h))
    logits = norm(x, model.model.norm) @ model.lm_head.weight.T
    return _cap(logits, getattr(config, "final_logit_softcapping", None))
