"""litgpt adapters: parity with explicit references of what litgpt before 0.5.5 and from 0.5.5 compute, the layout
asked for where the two differ, and one-line refusals naming the key or size that is wrong.

The references are written from Lightning-AI/litgpt, sharing no code with mm_adapter:

* ``litgpt/scripts/convert_hf_checkpoint.py`` + ``litgpt/model.py`` before 0.5.5: the fused qkv weight holds, per
  query group, its query heads, then its key head, then its value head; the model views the output as
  (B, T, n_query_groups, q_per_kv + 2, hs) and splits (q_per_kv, 1, 1).
* the same from 0.5.5: the fused qkv is [all queries | all keys | all values] and the model splits it by sizes
  (n_head * hs, n_query_groups * hs, n_query_groups * hs).
* ``litgpt/adapter.py`` of both: the prefix through the fused qkv, viewed as (1, aT, n_query_groups, q_per_kv + 2,
  hs) and split (q_per_kv, 1, 1) -- the pre-0.5.5 view in every release -- keys/values repeated per group, an
  all-true mask, ``y + gating_factor * ay`` with gating_factor (1, 1, n_head, 1).
"""

import math

import pytest
import torch
from test_interop import L, causal, decoder, ids, ours, refused

from mm_adapter import apply_adapter
from mm_adapter.interop import import_litgpt
from reference import rotary
from tiny import tiny_model

OLD, NEW = "pre-0.5.5", "0.5.5+"
START = 1  # adapter_start_layer: layers 1..3 adapted


def fused(q, k, v, groups, layout):
    """litgpt's fused qkv rows (a weight or a bias) from the transformers q/k/v rows, in ``layout``."""
    if layout == NEW:
        return torch.cat([q, k, v])
    per_group = [t.reshape(groups, -1, *t.shape[1:]) for t in (q, k, v)]
    return torch.cat(per_group, dim=1).reshape(-1, *q.shape[1:])


def fused_linear(attn, x, groups, layout):
    """``x`` through litgpt's fused qkv linear built from this layer's q/k/v projections (bias included)."""
    projections = (attn.q_proj, attn.k_proj, attn.v_proj)
    weight = fused(*(p.weight for p in projections), groups, layout)
    out = x @ weight.T
    if attn.q_proj.bias is not None:
        out = out + fused(*(p.bias for p in projections), groups, layout)
    return out


def model_qkv(qkv, layout, heads, groups, d):
    """q, k, v (B, n_head, T, hs) as litgpt's model splits its fused output, k/v repeated per query group."""
    batch, seq, per = qkv.shape[0], qkv.shape[1], heads // groups
    if layout == NEW:
        q, k, v = qkv.split((heads * d, groups * d, groups * d), dim=-1)
        q = q.view(batch, seq, heads, d).transpose(1, 2)
        k, v = (t.view(batch, seq, groups, d).transpose(1, 2).repeat_interleave(per, dim=1) for t in (k, v))
        return q, k, v
    q, k, v = qkv.view(batch, seq, groups, per + 2, d).permute(0, 2, 3, 1, 4).split((per, 1, 1), dim=2)
    q = q.reshape(batch, heads, seq, d)
    return q, k.repeat_interleave(per, dim=2).reshape_as(q), v.repeat_interleave(per, dim=2).reshape_as(q)


def adapter_kv(aqkv, heads, groups, d):
    """litgpt/adapter.py, every release: the pre-0.5.5 view of the prefix's fused output, whatever the layout."""
    a_t, per = aqkv.shape[1], heads // groups
    _, ak, av = aqkv.view(1, a_t, groups, per + 2, d).permute(0, 2, 3, 1, 4).split((per, 1, 1), dim=2)
    return (t.repeat_interleave(per, dim=2).view(1, heads, a_t, d) for t in (ak, av))


def litgpt_reference(model, tokens, state, start, layout):
    """What litgpt of ``layout`` computes with the adapter ``state`` on this base's weights."""
    heads, groups = model.config.num_attention_heads, model.config.num_key_value_heads
    d, theta = model.config.hidden_size // heads, model.config.rope_parameters["rope_theta"]

    def attention(index, layer, x):
        batch, seq, _ = x.shape
        q, k, v = model_qkv(fused_linear(layer.self_attn, x, groups, layout), layout, heads, groups, d)
        positions = torch.arange(seq).expand(batch, seq)
        q, k = rotary(q, positions, theta), rotary(k, positions, theta)
        y = (torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d) + causal(seq), -1) @ v).transpose(1, 2)
        if index >= start:
            prefix = state[f"transformer.h.{index}.attn.adapter_wte.weight"]
            ak, av = adapter_kv(fused_linear(layer.self_attn, prefix[None], groups, layout), heads, groups, d)
            ay = (torch.softmax(q @ ak.transpose(-1, -2) / math.sqrt(d), -1) @ av).transpose(1, 2)
            y = y + state[f"transformer.h.{index}.attn.gating_factor"].reshape(1, 1, heads, 1) * ay
        return y.reshape(batch, seq, -1)

    return decoder(model, tokens, attention)


def base_model(family, bias=False):
    """A tiny base; with ``bias``, random q/k/v/o biases (litgpt's fused qkv then has one too)."""
    model = tiny_model(family, attention_bias=bias)
    if bias:
        generator = torch.Generator().manual_seed(11)
        with torch.no_grad():
            for layer in model.model.layers:
                for projection in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    projection.bias.copy_(0.5 * torch.randn(projection.bias.shape, generator=generator))
    return model


def litgpt_file(path, gate_shape=(1, 1, 4, 1), seed=9):
    """A litgpt adapter checkpoint as ``fabric.save`` writes it: random prefixes and gates for layers 1..3."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for i in range(START, 4):
        state[f"transformer.h.{i}.attn.adapter_wte.weight"] = torch.randn(L, 64, generator=g)
        state[f"transformer.h.{i}.attn.gating_factor"] = torch.randn(gate_shape, generator=g)
    torch.save({"model": state}, path)
    return state


@pytest.mark.parametrize("family,bias,layout,gate_shape", [
    ("llama-gqa", False, OLD, (1, 1, 4, 1)),
    ("llama-mha", False, OLD, (1, 4, 1, 1)),  # older releases' gate shape
    ("llama-gqa", False, NEW, (1, 1, 4, 1)),
    ("llama-gqa", True, NEW, (1, 1, 4, 1)),
    ("mistral-gqa", False, None, (1, 1, 4, 1)),  # one key/value head: both layouts agree, none needed
])
def test_litgpt_adapter_matches_what_that_litgpt_computes(tmp_path, family, bias, layout, gate_shape):
    """The import on our stack gives the logits of the litgpt that wrote the file, for either fused layout (the
    0.5.5+ prompts are re-solved for k_proj/v_proj), with and without qkv biases."""
    model = base_model(family, bias)
    state = litgpt_file(tmp_path / "lit_model.pth.adapter", gate_shape)
    apply_adapter(model, import_litgpt(model, tmp_path / "lit_model.pth.adapter", layout=layout))
    tokens = ids()
    with torch.no_grad():
        expected = litgpt_reference(model, tokens, state, START, layout or NEW)
        base = litgpt_reference(model, tokens, state, 4, layout or NEW)
        other = litgpt_reference(model, tokens, state, START, OLD if layout == NEW else NEW)
    torch.testing.assert_close(ours(model, tokens), expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours(base_model(family, bias), tokens), base, atol=1e-4, rtol=1e-4)  # its own check
    assert (expected - base).abs().max() > 1e-2  # the adapter really changes the outputs
    if family == "llama-gqa":
        assert (expected - other).abs().max() > 1e-2  # and the layout really matters on this base


def test_litgpt_layout_is_asked_for_where_it_matters(tmp_path):
    """A file on a base with several key/value heads, no layout given: one line naming the flag; an unknown layout
    is refused; 0.5.5+ on an MHA base, whose keys come from query rows no prompt can reach, is refused exactly."""
    path = tmp_path / "lit_model.pth.adapter"
    litgpt_file(path)
    refused(import_litgpt, tiny_model("llama-gqa"), path,
            match=r"lit_model.pth.adapter: a litgpt checkpoint does not record which litgpt wrote it, and on this "
                  r"base \(2 key/value heads\) .* pass --litgpt-layout pre-0.5.5 or --litgpt-layout 0.5.5\+")
    refused(import_litgpt, tiny_model("llama-gqa"), path, layout="0.5.4", match=r"litgpt layout must be one of "
                                                                                 r"pre-0.5.5, 0.5.5\+, got '0.5.4'")
    refused(import_litgpt, tiny_model("llama-mha"), path, layout=NEW,
            match=r"litgpt 0.5.5\+ takes layer 1's prompt keys/values from fused qkv rows that are not this base's "
                  r"k_proj/v_proj .* \(128 key/value rows, hidden size 64; residual .*\), so it cannot be imported")


def test_litgpt_bad_input_names_the_key_or_size(tmp_path):
    """Wrong gate shapes, layers that are not the top ones or beyond the base, missing or foreign keys, another
    width, ragged prompts, a truncated file: one line each, naming the key or size."""
    model = tiny_model("llama-gqa")
    good = {f"transformer.h.{i}.attn.{name}": tensor for i in (2, 3)
            for name, tensor in (("adapter_wte.weight", torch.randn(L, 64)), ("gating_factor", torch.ones(1, 1, 4, 1)))}

    def write(name, state):
        torch.save({"model": state}, tmp_path / name)
        return tmp_path / name

    refused(import_litgpt, model, write("gate.pth", dict(good, **{"transformer.h.2.attn.gating_factor":
                                                                   torch.ones(1, 1, 8, 1)})),
            match=r"transformer.h.2.attn.gating_factor has shape \[1, 1, 8, 1\], expected \[1, 1, 4, 1\]")
    middle = {k.replace("h.3.", "h.1."): v for k, v in good.items()}
    refused(import_litgpt, model, write("middle.pth", middle),
            match=r"adapted layers must be the top ones of the base's 4; found 1-2, missing layer\(s\) 3")
    deep = dict(good, **{k.replace("h.3.", "h.7."): v for k, v in good.items() if "h.3." in k})
    refused(import_litgpt, model, write("deep.pth", deep),
            match=r"transformer.h.7.attn.adapter_wte.weight is for layer 7, but the base has only 4 layers")
    refused(import_litgpt, model, write("missing.pth", {k: v for k, v in good.items() if k != "transformer.h.2."
                                                         "attn.gating_factor"}),
            match=r"missing key 'transformer.h.2.attn.gating_factor'")
    refused(import_litgpt, model, write("full.pth", dict(good, **{"transformer.wte.weight": torch.zeros(97, 64)})),
            match=r"unexpected key 'transformer.wte.weight'")
    wide = {k: torch.randn(L, 96) if "wte" in k else v for k, v in good.items()}
    refused(import_litgpt, model, write("wide.pth", wide),
            match=r"adapter_wte.weight has shape \[3, 96\], but the base's hidden size is 64")
    ragged = dict(good, **{"transformer.h.3.attn.adapter_wte.weight": torch.randn(L + 1, 64)})
    refused(import_litgpt, model, write("ragged.pth", ragged), match=r"h.3.attn.adapter_wte.weight has 4 prompts, "
                                                                       r"but layer 2 has 3")
    path = write("ok.pth", good)
    (tmp_path / "cut.pth").write_bytes(path.read_bytes()[:-300])
    refused(import_litgpt, model, tmp_path / "cut.pth", match="truncated or corrupt")
    apply_adapter(model, import_litgpt(model, path, layout=OLD))  # the good one goes on
