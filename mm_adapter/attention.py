"""The heart of LLaMA-Adapter: zero-init gated attention over adaption prompts.

Instead of copying a decoder's forward (what PEFT's adaption_prompt does, and why it breaks at
transformers releases), we register one function in transformers' attention registry. Every
model that routes attention through ``ALL_ATTENTION_FUNCTIONS`` calls it with the attention
module and the rotary-embedded queries; we run the model's own attention for the token block and
add, per head, ``act(gate) * softmax(Q K_p^T * scale) V_p`` for the layer's prompt keys/values.

A registered attention name also needs a registered mask function, otherwise
``create_causal_mask`` returns ``None`` and the causal/padding mask silently disappears; we
register the wrapped implementation's own mask function under the same name.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

PREFIX = "mm_adapter_"
SUPPORTED_INNER = ("sdpa", "eager")


def _eager_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' reference eager attention (Llama's), looked up rather than copied."""
    from transformers.models.llama.modeling_llama import eager_attention_forward

    scaling = module.head_dim**-0.5 if scaling is None else scaling
    return eager_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)


def _inner_function(inner: str):
    if inner == "eager":
        return _eager_attention
    return ALL_ATTENTION_FUNCTIONS[inner]


def prompt_attention(module: torch.nn.Module, query: torch.Tensor, scaling: float) -> torch.Tensor | None:
    """``act(gate) * softmax(Q K_p^T * scale) V_p`` in the (batch, seq, heads, head_dim) layout.

    Returns ``None`` for a layer without an adapter. Every query row attends to every prompt, so
    no mask is involved. With only ``adapter_len`` keys, two small matmuls beat a fused attention
    kernel (whose backward on CPU costs nearly as much as for the whole token block); the gate
    scales V_p (heads x len x dim) instead of the much larger output. The scores are laid out
    (..., adapter_len, seq) and normalised over dim -2: PyTorch's CPU softmax over a last dim of
    ~10 elements is ~10x slower than over an inner dim (0.68 ms vs 0.06 ms for 4 x 9 x 77 x 10).
    """
    adapter = getattr(module, "adapter", None)
    if adapter is None:
        return None
    if not torch.is_grad_enabled():
        return _prompt_attention_inference(adapter, module, query, scaling)
    key_p, value_p = adapter.prompt_kv(module, query.dtype)  # (1 or batch, heads, L, head_dim)
    value_p = value_p * adapter.activated_gate().to(value_p.dtype).view(1, -1, 1, 1)
    scores = torch.matmul(key_p, query.transpose(-1, -2)) * scaling  # (batch, heads, L, seq)
    weights = torch.softmax(scores, dim=-2, dtype=torch.float32).to(query.dtype)
    return torch.matmul(weights.transpose(-1, -2), value_p).transpose(1, 2)


def train_token_block_in_fp32(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> bool:
    """Whether to run the token block's SDPA in fp32: on CPU, in bf16/fp16, when a backward will follow.

    PyTorch's CPU flash-attention backward is 2-4x slower in bf16 than in fp32 on short sequences
    (measured with torch 2.14 on AMX Xeons: batch 4 x 9 heads x 56 tokens, 13.6 ms vs 3.9 ms for
    forward + backward; see docs/performance.md), and a ScienceQA batch is short. Its bf16 forward
    is fast, so inference keeps the model's own dtype and stays bit-identical to the base model.
    """
    return (query.device.type == "cpu" and query.dtype in (torch.bfloat16, torch.float16)
            and torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad))


def _token_attention_fp32(inner_fn, module, query, key, value, attention_mask, **kwargs):
    """The wrapped implementation on fp32 copies of q/k/v (autocast off), output cast back."""
    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()
    with torch.autocast("cpu", enabled=False):
        out, weights = inner_fn(module, query.float(), key.float(), value.float(), attention_mask, **kwargs)
    return out.to(query.dtype), weights


def _prompt_attention_inference(adapter, module: torch.nn.Module, query: torch.Tensor, scaling: float) -> torch.Tensor:
    """Without a backward, one fused SDPA call on cached, gate-scaled K/V is the cheapest: per decoded
    token and layer 0.05 ms against 0.37 ms for the matmul/softmax/matmul chain (1 thread, bf16,
    SmolLM2 shapes). A zero gate still adds exactly zero (zero values)."""
    key_p, value_p = adapter.gated_kv(module, query.dtype)
    batch = query.shape[0]
    out = F.scaled_dot_product_attention(query, key_p.expand(batch, -1, -1, -1), value_p.expand(batch, -1, -1, -1),
                                         scale=scaling)
    return out.transpose(1, 2)


def make_adapter_attention(inner: str):
    """Build the registered function that wraps the attention implementation ``inner``."""
    inner_fn = _inner_function(inner)

    def adapter_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs: Any):
        if inner == "sdpa" and train_token_block_in_fp32(query, key, value):
            out, weights = _token_attention_fp32(inner_fn, module, query, key, value, attention_mask,
                                                 scaling=scaling, dropout=dropout, **kwargs)
        else:
            out, weights = inner_fn(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                    **kwargs)
        extra = prompt_attention(module, query, scaling if scaling is not None else module.head_dim**-0.5)
        if extra is not None:
            out = out + extra
        return out, weights

    adapter_attention.__name__ = f"adapter_attention_{inner}"
    return adapter_attention


def register(inner: str) -> str:
    """Register the adapter attention around ``inner`` (idempotent) and return its registry name."""
    if inner.startswith(PREFIX):
        return inner
    if inner not in SUPPORTED_INNER:
        raise ValueError(
            f"attention implementation {inner!r} is not supported by the adapter; load the model with "
            f"attn_implementation one of {', '.join(SUPPORTED_INNER)}"
        )
    name = PREFIX + inner
    if name not in ALL_ATTENTION_FUNCTIONS.valid_keys():
        ALL_ATTENTION_FUNCTIONS.register(name, make_adapter_attention(inner))
        ALL_MASK_ATTENTION_FUNCTIONS.register(name, ALL_MASK_ATTENTION_FUNCTIONS[inner])
    return name


def inner_name(registered: str) -> str:
    """The wrapped implementation of a registered name (identity for plain names)."""
    return registered.removeprefix(PREFIX)
