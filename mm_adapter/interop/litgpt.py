"""litgpt adapter checkpoints (``lit_model.pth.adapter``).

Format and math (Lightning-AI/litgpt ``litgpt/adapter.py``, ``litgpt/model.py``, ``litgpt/finetune/adapter.py``):

* saved by ``fabric.save(path, {"model": model}, filter=adapter_filter)``: a torch pickle holding
  ``{"model": {...}}`` with only ``transformer.h.{i}.attn.adapter_wte.weight`` [adapter_prompt_length,
  n_embd] and ``transformer.h.{i}.attn.gating_factor`` [1, 1, n_head, 1] (older releases
  [1, n_head, 1, 1], which litgpt itself still loads);
* layers ``i >= adapter_start_layer`` are adapted: the top ``n_layer - adapter_start_layer``;
* the prefix goes through the layer's own fused qkv linear and the adapter takes its keys and values
  by viewing the output as (n_query_groups, q_per_kv + 2, head_size) and picking entries q_per_kv
  and q_per_kv + 1 of each group, without rotary, repeated per query group; their attention is
  softmaxed on its own (an all-true mask) and added as ``gating_factor * ay``: the raw gate, one
  per head (``gate_activation="identity"``).

That view is the fused layout of litgpt before 0.5.5, where each query group's rows are its query
heads, then its key head, then its value head: there the picked rows are exactly the key and value
rows, i.e. ``k_proj``/``v_proj`` on the transformers layout of the same base, and the file imports
as it is. litgpt 0.5.5 concatenates the rows instead ([all queries | all keys | all values]) while
the adapter kept the same view, so with more than one key/value head it takes its prompt keys and
values from other rows (query rows, or another head's). Those are reproduced exactly by re-solving
each prompt so that ``k_proj``/``v_proj`` of the new prompt give the keys and values litgpt
computed; that has a solution where the key and value rows do not outnumber the hidden size
(GQA bases such as Llama-3-8B or Mistral-7B) and is refused where it has none (MHA bases). A
checkpoint does not record which litgpt wrote it, so where the layouts differ the caller says which
(``layout``; ``--litgpt-layout`` on ``mm-adapter convert``).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from mm_adapter.errors import MMAdapterError
from mm_adapter.interop.common import ForeignLayer, build_adapter, expect_shape, read_tensors, split_keys
from mm_adapter.model.adapter import decoder_layers
from mm_adapter.model.adapter_file import AdapterFile
from mm_adapter.model.family import head_layout

KEY = re.compile(r"^transformer\.h\.(\d+)\.attn\.(adapter_wte\.weight|gating_factor)$")
LAYOUTS = ("pre-0.5.5", "0.5.5+")
_EXACT = 1e-6  # largest residual of a re-solved prompt, relative to the keys/values it must give


def import_litgpt(model: nn.Module, path: str | Path, layout: str | None = None) -> AdapterFile:
    """Read a litgpt adapter checkpoint as our adapter for ``model`` (checked, not yet applied).

    ``layout``: the fused qkv layout of the litgpt that wrote it ("pre-0.5.5" or "0.5.5+"); needed
    only where the two give different prompt keys/values on this base (more than one key/value head).
    """
    path = Path(path)
    if layout is not None and layout not in LAYOUTS:
        raise MMAdapterError(f"litgpt layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    tensors = read_tensors(path, wrapper="model")
    heads = model.config.get_text_config().num_attention_heads
    layers = {}
    for index, fields in split_keys(path, tensors, KEY).items():
        for name in ("adapter_wte.weight", "gating_factor"):
            if name not in fields:
                raise MMAdapterError(f"{path}: missing key 'transformer.h.{index}.attn.{name}'")
        (prompt_key, prompt), (gate_key, gate) = fields["adapter_wte.weight"], fields["gating_factor"]
        expect_shape(path, gate_key, gate, (1, 1, heads, 1), (1, heads, 1, 1))
        layers[index] = ForeignLayer(prompt, gate, prompt_key, gate_key)
    adapter = build_adapter(model, path, layers, "identity")
    sources = _prompt_rows(model, path, layout)
    if sources is not None:
        for index, entry in adapter.layers.items():
            entry["prompt"] = _resolve_prompt(model, path, index, entry["prompt"], sources)
    return adapter


def fused_rows(layout: str, heads: int, groups: int, head_dim: int) -> torch.Tensor:
    """litgpt's fused qkv rows in ``layout``, as indices into the transformers rows ``[q_proj; k_proj; v_proj]``.

    Before 0.5.5 (``convert_hf_checkpoint``): per query group, its ``heads // groups`` query heads,
    its key head, its value head. From 0.5.5: all query rows, all key rows, all value rows.
    """
    queries = torch.arange(heads * head_dim).view(groups, heads // groups * head_dim)
    keys = heads * head_dim + torch.arange(groups * head_dim).view(groups, head_dim)
    values = keys + groups * head_dim
    if layout == "0.5.5+":
        return torch.cat([queries.flatten(), keys.flatten(), values.flatten()])
    return torch.cat([queries, keys, values], dim=1).flatten()


def adapter_rows(layout: str, heads: int, groups: int, head_dim: int) -> torch.Tensor:
    """The rows litgpt's adapter takes its prompt keys, then values, from (``[q_proj; k_proj; v_proj]`` indices):
    the fused output viewed as (groups, q_per_kv + 2, head_dim), entries q_per_kv and q_per_kv + 1 of each group,
    whatever the layout (``litgpt/adapter.py`` of every release)."""
    per_group = fused_rows(layout, heads, groups, head_dim).view(groups, heads // groups + 2, head_dim)
    return torch.cat([per_group[:, -2].flatten(), per_group[:, -1].flatten()])


def _prompt_rows(model: nn.Module, path: Path, layout: str | None) -> torch.Tensor | None:
    """The rows the file's litgpt took prompt keys/values from, or ``None`` where they are ``k_proj``/``v_proj``."""
    heads = head_layout(model.config)
    shape = (heads.num_heads, heads.num_kv_heads, heads.head_dim)
    ours = adapter_rows("pre-0.5.5", *shape)
    if layout is None:
        if torch.equal(adapter_rows("0.5.5+", *shape), ours):
            return None
        raise MMAdapterError(
            f"{path}: a litgpt checkpoint does not record which litgpt wrote it, and on this base "
            f"({heads.num_kv_heads} key/value heads) litgpt before 0.5.5 and 0.5.5+ compute different prompt "
            "keys/values from it; pass --litgpt-layout pre-0.5.5 or --litgpt-layout 0.5.5+ (layout= in Python)")
    rows = adapter_rows(layout, *shape)
    return None if torch.equal(rows, ours) else rows


def _resolve_prompt(model: nn.Module, path: Path, index: int, prompt: torch.Tensor,
                    rows: torch.Tensor) -> torch.Tensor:
    """The prompt whose ``k_proj``/``v_proj`` give the keys/values litgpt computed from ``prompt`` through ``rows``
    of ``[q_proj; k_proj; v_proj]``, or a one-line refusal where none does.

    The minimum-norm solution through the normal equations in float64 (1.4 s a layer for Llama-3-8B's 2048 x 4096
    on 2 cores, against 12-27 s for ``lstsq``); the residual check makes it exact or refused.
    """
    attention = decoder_layers(model)[index].self_attn
    projections = [attention.q_proj, attention.k_proj, attention.v_proj]
    weight = torch.cat([p.weight.detach().to("cpu", torch.float64) for p in projections])
    bias = torch.cat([torch.zeros(p.out_features, dtype=torch.float64) if p.bias is None
                      else p.bias.detach().to("cpu", torch.float64) for p in projections])
    ours = weight[attention.q_proj.out_features:]  # k_proj, then v_proj rows
    target = prompt.to(torch.float64) @ weight[rows].T + bias[rows] - bias[attention.q_proj.out_features:]
    coefficients, info = torch.linalg.solve_ex(ours @ ours.T, target.T)
    solved = (ours.T @ coefficients).T
    residual = (solved @ ours.T - target).abs().max().item()
    if info.item() != 0 or not residual <= _EXACT * max(1.0, target.abs().max().item()):  # NaN: refused too
        raise MMAdapterError(
            f"{path}: litgpt 0.5.5+ takes layer {index}'s prompt keys/values from fused qkv rows that are not this "
            f"base's k_proj/v_proj (its adapter slices the pre-0.5.5 layout), and no prompt gives them through "
            f"k_proj/v_proj here ({ours.shape[0]} key/value rows, hidden size {weight.shape[1]}; residual "
            f"{residual:.3g}), so it cannot be imported exactly")
    return solved.to(torch.float32).contiguous()
