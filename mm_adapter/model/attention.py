"""The heart of LLaMA-Adapter: zero-init gated attention over adaption prompts.

Instead of copying a decoder's forward (what PEFT's adaption_prompt does, and why it breaks at
transformers releases), we register one function in transformers' attention registry. Every
model that routes attention through ``ALL_ATTENTION_FUNCTIONS`` calls it with the attention
module and the rotary-embedded queries; we run the model's own attention for the token block and
add, per head, ``act(gate) * softmax(Q K_p^T * scale) V_p`` for the layer's prompt keys/values.
Where model families differ (key norm, GQA, eager function, logit softcap) the math reads the
:class:`~mm_adapter.model.family.Family` resolved at attach time (``family.py``).

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

from mm_adapter.model.family import FAMILIES, FamilySpec, eager_function

PREFIX = "mm_adapter_"
SUPPORTED_INNER = ("sdpa", "eager")


def activate_gate(gate: torch.Tensor, activation: str) -> torch.Tensor:
    """The effective gate (per head, or one per layer): ``tanh(gate)`` (official training code) or the raw gate
    (official inference code, PEFT)."""
    return torch.tanh(gate) if activation == "tanh" else gate


def gate_values(value_p: torch.Tensor, gate: torch.Tensor, activation: str) -> torch.Tensor:
    """``act(gate_h) * V_p`` per head: the one place the gate enters, for training and inference alike.

    ``gate`` holds one value per head, or one for the layer (``gate_granularity="layer"``), which
    broadcasts to every head: both are the same view. Scaling V_p (heads x adapter_len x head_dim)
    instead of the attention output (heads x seq x head_dim) is the same product, since the prompt
    softmax is linear in V_p, and much smaller. A zero gate gives zero values, so the prompt branch
    adds exactly zero.
    """
    return value_p * activate_gate(gate, activation).to(value_p.dtype).view(1, -1, 1, 1)


def _eager_wrapper(spec: FamilySpec):
    """The family's own eager attention (looked up, not copied), with Llama's required ``scaling`` defaulted."""
    eager = eager_function(spec)

    def eager_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        scaling = module.head_dim**-0.5 if scaling is None else scaling
        return eager(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)

    return eager_attention


def _inner_function(inner: str, spec: FamilySpec):
    if inner == "eager":
        return _eager_wrapper(spec)
    return ALL_ATTENTION_FUNCTIONS[inner]


def prompt_attention(module: torch.nn.Module, query: torch.Tensor, scaling: float) -> torch.Tensor | None:
    """``softmax(cap(Q K_p^T * scale)) (act(gate) V_p)`` in the (batch, seq, heads, head_dim) layout.

    Returns ``None`` for a layer without an adapter. Every query row attends to every prompt, so
    no mask is involved (nor a sliding window: prompts are not tokens). ``cap`` is the family's
    logit softcap (Gemma2), identity where it has none. Training uses :func:`_attend_chain`;
    inference one fused SDPA call (:func:`_attend_fused`) unless logits are softcapped, which SDPA
    cannot do. Both read the same gate-scaled values from ``adapter.gated_kv``.
    """
    adapter = getattr(module, "adapter", None)
    if adapter is None:
        return None
    key_p, value_p = adapter.gated_kv(module, query.dtype)  # (1 or batch, heads, L, head_dim)
    softcap = adapter.runtime.family.softcap
    if softcap is None and not torch.is_grad_enabled():
        return _attend_fused(query, key_p, value_p, scaling)
    return _attend_chain(query, key_p, value_p, scaling, softcap)


def _attend_chain(query: torch.Tensor, key_p: torch.Tensor, value_p: torch.Tensor, scaling: float,
                  softcap: float | None) -> torch.Tensor:
    """Two small matmuls: with only ``adapter_len`` keys they beat a fused attention kernel (whose
    backward on CPU costs nearly as much as for the whole token block). The scores are laid out
    (..., adapter_len, seq) and normalised over dim -2: PyTorch's CPU softmax over a last dim of
    ~10 elements is ~10x slower than over an inner dim (0.68 ms vs 0.06 ms for 4 x 9 x 77 x 10).
    """
    scores = torch.matmul(key_p, query.transpose(-1, -2)) * scaling  # (batch, heads, L, seq)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
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


def _attend_fused(query: torch.Tensor, key_p: torch.Tensor, value_p: torch.Tensor, scaling: float) -> torch.Tensor:
    """Without a backward, one fused SDPA call on cached, gate-scaled K/V is the cheapest: per decoded
    token and layer 0.05 ms against 0.37 ms for the matmul/softmax/matmul chain (1 thread, bf16,
    SmolLM2 shapes)."""
    batch = query.shape[0]
    out = F.scaled_dot_product_attention(query, key_p.expand(batch, -1, -1, -1), value_p.expand(batch, -1, -1, -1),
                                         scale=scaling)
    return out.transpose(1, 2)


def make_adapter_attention(inner: str, spec: FamilySpec | None = None):
    """Build the registered function that wraps the attention implementation ``inner`` (of ``spec``'s family)."""
    inner_fn = _inner_function(inner, spec or FAMILIES["llama"])

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


def registered_name(inner: str, spec: FamilySpec | None = None) -> str:
    """``mm_adapter_sdpa`` (SDPA is family-independent) or ``mm_adapter_eager_<model_type>``."""
    return PREFIX + inner if inner == "sdpa" else f"{PREFIX}{inner}_{(spec or FAMILIES['llama']).model_type}"


def register(inner: str, spec: FamilySpec | None = None) -> str:
    """Register the adapter attention around ``inner`` (idempotent) and return its registry name.

    Eager attention is registered once per family, wrapping that family's own eager function
    (``spec``; Llama's when omitted); every layer, adapted or not, runs through it.
    """
    if inner.startswith(PREFIX):
        return inner
    if inner not in SUPPORTED_INNER:
        raise ValueError(
            f"attention implementation {inner!r} is not supported by the adapter; load the model with "
            f"attn_implementation one of {', '.join(SUPPORTED_INNER)}"
        )
    name = registered_name(inner, spec)
    if name not in ALL_ATTENTION_FUNCTIONS.valid_keys():
        ALL_ATTENTION_FUNCTIONS.register(name, make_adapter_attention(inner, spec))
        ALL_MASK_ATTENTION_FUNCTIONS.register(name, ALL_MASK_ATTENTION_FUNCTIONS[inner])
    return name


def inner_name(registered: str) -> str:
    """The wrapped implementation of a registered name (identity for plain names)."""
    if not registered.startswith(PREFIX):
        return registered
    return registered.removeprefix(PREFIX).split("_", 1)[0]


def custom_mask(config, allowed: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A (batch, 1, query, key) boolean "may attend" mask in the form the model's attention takes a prepared 4D
    mask (``create_causal_mask`` passes one through as it is): boolean for SDPA, additive for eager attention,
    which adds the mask to its scores (a boolean there would add 1.0 and hide nothing)."""
    if inner_name(config._attn_implementation or "sdpa") != "eager":
        return allowed
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)
