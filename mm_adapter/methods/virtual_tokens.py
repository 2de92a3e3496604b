"""PEFT's prompt-learning methods (prompt tuning, prefix tuning) in the project's decoder-level calls.

PEFT puts their virtual tokens in only inside ``PeftModel.forward``, which computes logits at every position.
The trainer (``lm_loss_sum``: the LM head only at labelled positions) and score mode (letters, and the QCM-T
cloze that runs each prompt once into a KV cache and the options on top) call ``model.get_decoder()``
instead, which on a PeftModel is the bare base decoder: the virtual tokens would be silently missing. So
:func:`route_virtual_tokens` gives such a PeftModel a ``get_decoder`` returning :class:`VirtualTokensDecoder`,
which puts them in exactly as PEFT's forward does:

* prompt tuning: ``n`` learned embeddings before the input's, at positions 0..n-1;
* prefix tuning: ``n`` learned keys/values per layer as a cache in front;

and in both every real token ``i`` sits at position ``n + i`` and attends to all ``n``. A call without a cache
puts them in; a call on a cache returned by an earlier one finds them there, so only the masks and positions
shift. Outputs hold the real tokens' states only. ``tests/test_methods.py`` checks the logits against
``PeftModel.forward`` and the cloze scores against a per-option forward.
"""

from __future__ import annotations

import types
from dataclasses import dataclass

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPast


def virtual_tokens(model: nn.Module) -> int:
    """How many positions a PEFT prompt-learning method puts before the input (0 for any other model)."""
    config = getattr(model, "active_peft_config", None)
    return config.num_virtual_tokens if config is not None and config.is_prompt_learning else 0


def context_tokens(model) -> int | None:
    """The most tokens of text the model reads at once (its text config's ``max_position_embeddings``, less the
    positions a PEFT prompt-learning method's virtual tokens take); None if unstated."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    found = getattr(config, "max_position_embeddings", None)
    return found - virtual_tokens(model) if isinstance(found, int) and found > 0 else None


def _prefix(width: int, like: torch.Tensor) -> torch.Tensor:
    return torch.ones(like.shape[0], width, dtype=like.dtype, device=like.device)


def _with_virtual(mask: torch.Tensor, n: int, as_queries: bool) -> torch.Tensor:
    """A prepared (batch, 1, query, key) mask (boolean, or additive: 0 attends) widened by the ``n`` virtual
    tokens every real token attends to; with ``as_queries`` (prompt tuning, where they are inputs too) also their
    own rows, causal among themselves and blind to the text after them."""
    see = torch.ones((), dtype=torch.bool, device=mask.device)
    if mask.dtype != torch.bool:
        see = torch.zeros((), dtype=mask.dtype, device=mask.device)
    blind = ~see if mask.dtype == torch.bool else torch.full((), torch.finfo(mask.dtype).min, dtype=mask.dtype,
                                                               device=mask.device)
    batch, _, queries, keys = mask.shape
    mask = torch.cat([see.expand(batch, 1, queries, n), mask], dim=-1)
    if not as_queries:
        return mask
    causal = torch.ones(n, n, dtype=torch.bool, device=mask.device).tril()
    top = torch.cat([torch.where(causal, see, blind), blind.expand(n, keys)], dim=-1)
    return torch.cat([top.expand(batch, 1, n, n + keys), mask], dim=-2)


@dataclass
class VirtualTokensDecoder:
    """The base decoder called as ``model.get_decoder()`` is, with the virtual tokens of ``peft_model`` in front."""

    peft_model: nn.Module

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 position_ids: torch.Tensor | None = None, cache=None, use_cache: bool | None = None,
                 **kwargs) -> BaseModelOutputWithPast:
        model, n = self.peft_model, virtual_tokens(self.peft_model)
        decoder = model.get_base_model().get_decoder()
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        prompt_tuning = cache is None and model.active_peft_config.peft_type != "PREFIX_TUNING"
        if isinstance(attention_mask, dict):  # prepared masks, one per layer type
            mask = {kind: _with_virtual(m, n, prompt_tuning) for kind, m in attention_mask.items()}
        elif attention_mask.dim() == 4:
            mask = _with_virtual(attention_mask, n, prompt_tuning)
        else:
            mask = torch.cat([_prefix(n, attention_mask), attention_mask], dim=1)
        embeds = decoder.get_input_embeddings()(input_ids)
        if position_ids is None:  # PEFT's forward: real token i at position n + i (past tokens counted as theirs)
            past = cache.get_seq_length() - n if cache is not None else 0
            position_ids = torch.arange(past, past + input_ids.shape[1], device=input_ids.device)[None]
        positions = position_ids + n
        first = cache is None
        if first and model.active_peft_config.peft_type == "PREFIX_TUNING":
            cache = model.get_prompt(input_ids.shape[0], max_cache_len=input_ids.shape[1] + n)
        elif first:  # prompt tuning: the learned embeddings go in as the first n inputs
            prompts = model.get_prompt(batch_size=input_ids.shape[0]).to(embeds.dtype)
            embeds = torch.cat([prompts, embeds], dim=1)
            positions = torch.cat([torch.arange(n, device=positions.device).expand(positions.shape[0], n),
                                   positions], dim=1)
        out = decoder(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, cache=cache,
                      use_cache=use_cache, **kwargs)
        hidden = out.last_hidden_state[:, -input_ids.shape[1]:]
        return BaseModelOutputWithPast(last_hidden_state=hidden, cache=out.cache)


def route_virtual_tokens(peft_model: nn.Module) -> nn.Module:
    """Make ``peft_model.get_decoder()`` put its virtual tokens in (a no-op for other PEFT methods); returns it.

    A bound method on this instance only (as ``attach_adapter`` shadows ``save_pretrained``); ``copy.deepcopy``
    rebinds it to the copy.
    """
    if virtual_tokens(peft_model):
        peft_model.get_decoder = types.MethodType(VirtualTokensDecoder, peft_model)
    return peft_model
