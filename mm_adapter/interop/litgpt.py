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
from mm_adapter.interop.common import (
    ForeignLayer,
    ForeignTensor,
    build_adapter,
    build_v2,
    expect_shape,
    final_norm,
    read_tensors,
    split_keys,
)
from mm_adapter.model.adapter import decoder_layers
from mm_adapter.model.adapter_file import AdapterFile
from mm_adapter.model.config import ALL_LINEAR, AdapterV2Config
from mm_adapter.model.family import head_layout

KEY = re.compile(r"^transformer\.h\.(\d+)\.attn\.(adapter_wte\.weight|gating_factor)$")
LAYOUTS = ("pre-0.5.5", "0.5.5+")
_EXACT = 1e-6  # largest residual of a re-solved prompt, relative to the keys/values it must give
# litgpt/adapter_v2.py adapter_filter: what an adapter_v2 checkpoint holds beyond the v1 prompts and gates
V2_FILTER = ("adapter_scale", "adapter_bias", "norm_1", "norm_2", "ln_f")
V2_LINEAR = re.compile(r"^transformer\.h\.(\d+)\.(attn\.attn|attn\.qkv|attn\.proj|mlp\.fc_1|mlp\.fc_2|mlp\.proj)"
                       r"\.adapter_(bias|scale)$")
V2_NORM = re.compile(r"^transformer\.h\.(\d+)\.(norm_1|norm_2)\.weight$")
V2_TOP = {"transformer.ln_f.weight", "lm_head.adapter_bias", "lm_head.adapter_scale"}
QKV_LAYOUT = {"attn.attn": "pre-0.5.5", "attn.qkv": "0.5.5+"}  # litgpt renamed the fused linear with its new layout
# litgpt's LLaMAMLP fc_1/fc_2/proj are transformers' gate_proj/up_proj/down_proj (litgpt convert_hf_checkpoint)
LINEARS = {"attn.proj": ("self_attn", "o_proj"), "mlp.fc_1": ("mlp", "gate_proj"), "mlp.fc_2": ("mlp", "up_proj"),
           "mlp.proj": ("mlp", "down_proj")}


def import_litgpt(model: nn.Module, path: str | Path, layout: str | None = None) -> AdapterFile:
    """Read a litgpt adapter (``lit_model.pth.adapter``) or adapter_v2 (``lit_model.pth.adapter_v2``) checkpoint
    as our adapter for ``model`` (checked, not yet applied); an adapter_v2 one gives a LLaMA-Adapter V2 adapter.

    ``layout``: the fused qkv layout of the litgpt that wrote it ("pre-0.5.5" or "0.5.5+"); needed
    only where the two give different prompt keys/values on this base (more than one key/value head), and never for
    an adapter_v2 checkpoint, whose fused qkv key names say which.
    """
    path = Path(path)
    if layout is not None and layout not in LAYOUTS:
        raise MMAdapterError(f"litgpt layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    tensors = read_tensors(path, wrapper="model")
    v2 = {key: tensors.pop(key) for key in sorted(tensors) if any(part in key for part in V2_FILTER)}
    if v2:
        layout = _v2_layout(path, v2, layout)
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
    if v2:
        build_v2(model, path, adapter, AdapterV2Config(targets=ALL_LINEAR, train_norms=True, head=True),
                 _v2_tensors(model, path, v2, layout))
    sources = _prompt_rows(model, path, layout)
    if sources is not None:
        for index, entry in adapter.layers.items():
            entry["prompt"] = _resolve_prompt(model, path, index, entry["prompt"], sources, adapter.v2_tensors)
    return adapter


def _v2_layout(path: Path, tensors: dict[str, torch.Tensor], layout: str | None) -> str:
    """The fused qkv layout an adapter_v2 checkpoint was written in, from its key names: litgpt before 0.5.5 named
    the fused linear ``attn.attn``, from 0.5.5 ``attn.qkv`` (its loader reorders a legacy ``attn.attn`` weight into
    the new layout as it renames it). A ``layout`` given that contradicts them is refused."""
    found: dict[str, str] = {}  # layout -> its first key
    for key in sorted(tensors):
        if (match := V2_LINEAR.match(key)) and match.group(2) in QKV_LAYOUT:
            found.setdefault(QKV_LAYOUT[match.group(2)], key)
    if len(found) != 1:
        detail = " and ".join(found.values()) if found else "no transformer.h.*.attn.attn|qkv.adapter_bias"
        raise MMAdapterError(f"{path}: a litgpt adapter_v2 checkpoint holds the fused qkv's bias/scale under one "
                             f"name; found {detail}")
    (written, key), = found.items()
    if layout is not None and layout != written:
        raise MMAdapterError(f"{path}: {key} is how litgpt {written} names the fused qkv, but --litgpt-layout "
                             f"{layout} was given")
    return written


def _v2_tensors(model: nn.Module, path: Path, tensors: dict[str, torch.Tensor],
                layout: str) -> dict[str, ForeignTensor]:
    """The adapter_v2 bias/scale and norms under our module names: every one the checkpoint must hold, the fused qkv
    split into q/k/v rows by ``layout``, lm_head's into the output layer's (``AdapterV2Config.head``)."""
    layers, names = decoder_layers(model), {id(module): name for name, module in model.named_modules()}
    qkv = next(name for name, value in QKV_LAYOUT.items() if value == layout)
    expected = {f"lm_head.adapter_{field}" for field in ("bias", "scale")} | {"transformer.ln_f.weight"}
    for index in range(len(layers)):
        expected |= {f"transformer.h.{index}.{norm}.weight" for norm in ("norm_1", "norm_2")}
        expected |= {f"transformer.h.{index}.{linear}.adapter_{field}" for linear in (qkv, *LINEARS)
                     for field in ("bias", "scale")}
    for key in tensors:
        if key not in expected:
            raise MMAdapterError(f"{path}: unexpected key {key!r}: not part of a litgpt adapter_v2 checkpoint for "
                                 f"this base ({len(layers)} layers, LLaMA-style MLP fc_1/fc_2/proj, RMSNorm)")
    missing = sorted(expected - set(tensors))
    if missing:
        raise MMAdapterError(f"{path}: missing key {missing[0]!r} ({len(missing)} missing; an adapter_v2 checkpoint "
                             "holds every layer's bias, scale and norms)")
    head = model.get_output_embeddings()
    out = {f"{names[id(head)]}.{field}": ForeignTensor(f"lm_head.adapter_{field}", tensors[f"lm_head.adapter_{field}"])
           for field in ("bias", "scale")}
    out[f"{names[id(final_norm(model))]}.weight"] = ForeignTensor("transformer.ln_f.weight",
                                                                    tensors["transformer.ln_f.weight"])
    shape = head_layout(model.config)
    for index, layer in enumerate(layers):
        prefix = f"transformer.h.{index}."
        # norm_2 feeds the MLP: post_attention_layernorm in Llama, pre_feedforward_layernorm where sandwich norms exist
        mlp_norm = getattr(layer, "pre_feedforward_layernorm", None) or layer.post_attention_layernorm
        for norm, module in (("norm_1", layer.input_layernorm), ("norm_2", mlp_norm)):
            out[f"{names[id(module)]}.weight"] = ForeignTensor(f"{prefix}{norm}.weight", tensors[f"{prefix}{norm}.weight"])
        for field in ("bias", "scale"):
            for linear, (parent, child) in LINEARS.items():
                module = getattr(getattr(layer, parent), child)
                key = f"{prefix}{linear}.adapter_{field}"
                out[f"{names[id(module)]}.{field}"] = ForeignTensor(key, tensors[key])
            key = f"{prefix}{qkv}.adapter_{field}"
            fused = tensors[key]
            rows = fused_rows(layout, shape.num_heads, shape.num_kv_heads, shape.head_dim)
            expect_shape(path, key, fused, (len(rows),))
            ours = torch.empty_like(fused)
            ours[rows] = fused  # fused row r is transformers row rows[r] of [q_proj; k_proj; v_proj]
            attention = layer.self_attn
            split = ours.split([attention.q_proj.out_features, attention.k_proj.out_features,
                                attention.v_proj.out_features])
            for module, part in zip((attention.q_proj, attention.k_proj, attention.v_proj), split, strict=True):
                out[f"{names[id(module)]}.{field}"] = ForeignTensor(key, part)
    return out


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


def _resolve_prompt(model: nn.Module, path: Path, index: int, prompt: torch.Tensor, rows: torch.Tensor,
                    v2: dict[str, torch.Tensor]) -> torch.Tensor:
    """The prompt whose ``k_proj``/``v_proj`` give the keys/values litgpt computed from ``prompt`` through ``rows``
    of ``[q_proj; k_proj; v_proj]``, or a one-line refusal where none does. ``v2``: an adapter_v2 checkpoint's
    tensors under our file names, whose bias/scale act on both sides (``s * (W x + b_W + b)``).

    The minimum-norm solution through the normal equations in float64 (1.4 s a layer for Llama-3-8B's 2048 x 4096
    on 2 cores, against 12-27 s for ``lstsq``); the residual check makes it exact or refused.
    """
    attention = decoder_layers(model)[index].self_attn
    projections = [attention.q_proj, attention.k_proj, attention.v_proj]
    names = {id(module): name for name, module in model.named_modules()}
    weight = torch.cat([p.weight.detach().to("cpu", torch.float64) for p in projections])
    bias = torch.cat([torch.zeros(p.out_features, dtype=torch.float64) if p.bias is None
                      else p.bias.detach().to("cpu", torch.float64) for p in projections])
    scale = torch.ones_like(bias)
    if v2:
        bias += torch.cat([v2[f"adapter_v2.{names[id(p)]}.bias"].to(torch.float64) for p in projections])
        scale = torch.cat([v2[f"adapter_v2.{names[id(p)]}.scale"].to(torch.float64) for p in projections])
    kv = slice(attention.q_proj.out_features, None)
    ours = weight[kv]  # k_proj, then v_proj rows
    target = (scale[rows] * (prompt.to(torch.float64) @ weight[rows].T + bias[rows])) / scale[kv] - bias[kv]
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
