"""The model families the adapter supports: one table, resolved once when an adapter is attached.

The adapter touches a decoder in four places that differ between families: how prompt keys are
made (Qwen3 normalises keys per head *before* rotary, so prompt keys get the same ``k_norm``),
how query heads share key/value heads (GQA), which eager attention computes the token block, and
how attention logits are post-processed (Gemma2 softcaps them). Gemma3 combines several: keys
normalised per head by a norm that multiplies by ``1 + weight``, sliding-window and global layers
mixed (``layer_types``), ``query_pre_attn_scalar`` scaling (transformers passes it to the attention
function as ``scaling``, which the prompt scores reuse), and no logit softcap (its attention never
passes one, whatever ``attn_logit_softcapping`` says). Each row of :data:`FAMILIES` says
where a family stands on each point; :func:`resolve_family` turns the row and a model's config into
a :class:`Family` that the attention math reads at every forward, with no attribute probing.

Policies, stated once:

* Unknown model types are refused (``MMAdapterError``), not guessed: a silent "Llama-like" default
  is exactly how a key norm or a softcap would be skipped without anyone noticing. Adding a family
  is one row here plus a test in ``tests/test_family.py``.
* Attention logit softcapping (Gemma2's ``attn_logit_softcapping``) is handled exactly: prompt
  scores get the same ``cap * tanh(score / cap)`` as token scores before their own softmax, and the
  token block runs Gemma2's own eager attention (which caps). SDPA cannot softcap, so a softcapped
  model under ``attn_implementation="sdpa"`` is refused at attach.
* Sliding windows restrict which *tokens* a token sees. Prompts are not tokens (they have no
  position): every token sees every prompt, as in LLaMA-Adapter. The token block keeps the model's
  own sliding-window mask, which the registered mask function (``attention.register``) preserves.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from mm_adapter.errors import MMAdapterError


@dataclass(frozen=True)
class FamilySpec:
    """One row of the family table: where a decoder family differs at the points the adapter touches.

    model_type: ``config.model_type`` of the family's text config.
    eager_function: import path of the family's own eager attention, wrapped for the token block
        under ``attn_implementation="eager"`` (Gemma2's softcaps; Llama's would silently not).
    key_norm: attribute of the attention module that normalises keys per head before rotary; prompt
        keys go through it too. ``None``: keys are not normalised.
    input_norm: attribute of the decoder layer holding the norm in front of attention (the scale
        ``prompt_init="norm_scaled"`` multiplies prompts by).
    norm_weight_offset: the norm multiplies by ``offset + weight`` (Gemma stores ``weight - 1``).
    logit_softcap: config attribute holding the attention logit softcap, or ``None``.
    bidirectional: config attribute that, when true, makes attention bidirectional (Gemma3's
        ``use_bidirectional_attention``, set for encoders such as EmbeddingGemma): such a model is
        refused, since the adapter's causal token block and option scoring assume a causal decoder.
    """

    model_type: str
    eager_function: str
    key_norm: str | None = None
    input_norm: str = "input_layernorm"
    norm_weight_offset: float = 0.0
    logit_softcap: str | None = None
    bidirectional: str | None = None


def _eager(family: str) -> str:
    return f"transformers.models.{family}.modeling_{family}.eager_attention_forward"


FAMILIES: dict[str, FamilySpec] = {spec.model_type: spec for spec in (
    FamilySpec("llama", _eager("llama")),
    FamilySpec("mistral", _eager("mistral")),
    FamilySpec("qwen2", _eager("qwen2")),
    FamilySpec("qwen3", _eager("qwen3"), key_norm="k_norm"),
    FamilySpec("gemma2", _eager("gemma2"), norm_weight_offset=1.0, logit_softcap="attn_logit_softcapping"),
    FamilySpec("gemma3_text", _eager("gemma3"), key_norm="k_norm", norm_weight_offset=1.0,
               bidirectional="use_bidirectional_attention"),
)}


@dataclass(frozen=True)
class HeadLayout:
    """Attention heads of one model. Query head ``h`` reads key/value head ``h // kv_groups``
    (transformers' ``repeat_kv``), so prompt keys/values are repeated with ``repeat_interleave``."""

    num_heads: int
    num_kv_heads: int
    head_dim: int

    @property
    def kv_groups(self) -> int:
        return self.num_heads // self.num_kv_heads


@dataclass(frozen=True)
class Family:
    """A :class:`FamilySpec` resolved against one model's config: what the math reads per forward."""

    spec: FamilySpec
    heads: HeadLayout
    softcap: float | None

    @property
    def key_norm(self) -> str | None:
        return self.spec.key_norm


def unsupported(model_type: str, reason: str) -> MMAdapterError:
    return MMAdapterError(f"model type {model_type!r} is not supported by the adapter: {reason}")


def text_config(config):
    """The decoder's config (the text half of a multimodal config)."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def family_spec(model_type: str) -> FamilySpec:
    spec = FAMILIES.get(model_type)
    if spec is None:
        raise unsupported(model_type, f"it is not in the family table (supported: {', '.join(sorted(FAMILIES))})")
    return spec


def head_layout(config) -> HeadLayout:
    """The attention heads of a model with ``config`` (any family), or a one-line refusal where GQA cannot group them."""
    config = text_config(config)
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    if heads % kv_heads:
        raise unsupported(config.model_type, f"{heads} query heads do not split into {kv_heads} key/value heads")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return HeadLayout(heads, kv_heads, head_dim)


def resolve_family(config, inner_attention: str) -> Family:
    """The family of a model with ``config``, whose token block runs ``inner_attention``, or a one-line refusal."""
    config = text_config(config)
    spec = family_spec(config.model_type)
    heads = head_layout(config)
    if spec.bidirectional and getattr(config, spec.bidirectional, False):
        raise unsupported(spec.model_type, f"its attention is bidirectional ({spec.bidirectional}=True), not a "
                                           "causal decoder's")
    softcap = getattr(config, spec.logit_softcap) if spec.logit_softcap else None
    if softcap is not None and inner_attention == "sdpa":
        raise unsupported(spec.model_type, f"attention logits are softcapped ({spec.logit_softcap}={softcap}) "
                                           "and SDPA cannot softcap; load it with attn_implementation='eager'")
    return Family(spec=spec, heads=heads, softcap=softcap)


def check_layer(family: Family, index: int, layer: nn.Module) -> None:
    """Refuse, at attach, a layer lacking what its family row promises (instead of failing mid-forward)."""
    attn = getattr(layer, "self_attn", None)
    needed = [("self_attn", attn)]
    if attn is not None:
        needed += [(f"self_attn.{name}", getattr(attn, name, None)) for name in ("k_proj", "v_proj")]
        if family.key_norm:
            needed.append((f"self_attn.{family.key_norm}", getattr(attn, family.key_norm, None)))
    needed.append((family.spec.input_norm, getattr(layer, family.spec.input_norm, None)))
    missing = [name for name, found in needed if found is None]
    if missing:
        raise unsupported(family.spec.model_type, f"decoder layer {index} ({type(layer).__name__}) has no "
                                                  f"{', '.join(missing)}")


def eager_function(spec: FamilySpec) -> Callable:
    """The family's own eager attention, imported (never copied) from transformers."""
    module_name, _, name = spec.eager_function.rpartition(".")
    return getattr(importlib.import_module(module_name), name)
