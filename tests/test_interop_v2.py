"""LLaMA-Adapter V2 checkpoints made elsewhere: litgpt ``adapter_v2`` and the official V2 release's language model
part, each against an explicit re-implementation of the forward that wrote it; their refusals through the real
``mm-adapter convert``; an imported V2 adapter exported with ``--to merged``.

The references are written from the foreign sources, sharing no code with mm_adapter:

* Lightning-AI/litgpt ``litgpt/adapter_v2.py`` (``AdapterV2Linear``: ``adapter_scale * (linear(x) + adapter_bias)``
  on the fused qkv, the attention projection, the MLP's fc_1/fc_2/proj and lm_head; trainable norm_1, norm_2,
  ln_f) over ``litgpt/adapter.py`` (the prefix through the same fused qkv, sliced with the pre-0.5.5 view); the fused
  layouts and their splits as in ``test_interop_litgpt.py``.
* OpenGVLab/LLaMA-Adapter ``llama_adapter_v2_multimodal7b/llama/llama.py`` (Meta layout, interleaved rotary,
  ``nn.Linear`` biases on wq, wo, w1, w2, w3, ``gate.tanh()``) driven as ``llama_adapter.py`` drives it.
"""

import math
import re
import subprocess
import sys

import pytest
import torch
from test_base_loading import hf_to_meta_rotary, meta_rotary
from test_interop import L, causal, ids, ours
from test_interop_cli import base, convert  # noqa: F401  (base: the module-scoped tiny base fixture)
from test_interop_litgpt import NEW, OLD, START, adapter_kv, base_model, fused, model_qkv
from test_v2_export import IDS, PLAIN_LOAD
from transformers import AutoModelForCausalLM

from mm_adapter import MMAdapterError, load_adapter, load_base, read_adapter
from mm_adapter.interop import import_litgpt, import_official, load_foreign_adapter
from mm_adapter.interop.merged import PROMPT_ADAPTER
from mm_adapter.model.adapter import adapter_v2_state
from mm_adapter.model.v2_merge import merge_v2, unmerge_v2
from reference import linear, rms_norm, rotary
from tiny import tiny_model

QKV = {OLD: "attn.attn", NEW: "attn.qkv"}  # litgpt's name for the fused linear, before and from 0.5.5
LINEARS = ("attn.proj", "mlp.fc_1", "mlp.fc_2", "mlp.proj")


def noisy(generator, shape, around):
    return around + 0.1 * torch.randn(shape, generator=generator)


# ---- litgpt adapter_v2 ----------------------------------------------------------------------------------------------

def litgpt_v2_state(model, layout, seed=7, head_bias=True):
    """A litgpt adapter_v2 checkpoint's tensors as ``fabric.save(..., filter=adapter_filter)`` keeps them: prompts and
    gates of layers START.., every layer's AdapterV2Linear bias/scale and norms, ln_f, lm_head's bias/scale."""
    g = torch.Generator().manual_seed(seed)
    config = model.config
    heads, groups = config.num_attention_heads, config.num_key_value_heads
    d, hidden = config.hidden_size // heads, config.hidden_size
    sizes = {QKV[layout]: (heads + 2 * groups) * d, "attn.proj": hidden, "mlp.fc_1": config.intermediate_size,
             "mlp.fc_2": config.intermediate_size, "mlp.proj": hidden}
    state = {}
    for i in range(config.num_hidden_layers):
        p = f"transformer.h.{i}."
        if i >= START:
            state[p + "attn.adapter_wte.weight"] = torch.randn(L, hidden, generator=g)
            state[p + "attn.gating_factor"] = torch.randn(1, 1, heads, 1, generator=g)
        for name, size in sizes.items():
            state[f"{p}{name}.adapter_bias"] = noisy(g, size, 0.0)
            state[f"{p}{name}.adapter_scale"] = noisy(g, size, 1.0)
        for norm in ("norm_1", "norm_2"):
            state[f"{p}{norm}.weight"] = noisy(g, hidden, 1.0)
    state["transformer.ln_f.weight"] = noisy(g, hidden, 1.0)
    state["lm_head.adapter_bias"] = noisy(g, config.vocab_size, 0.0) * head_bias
    state["lm_head.adapter_scale"] = noisy(g, config.vocab_size, 1.0)
    return state


def identity_v2(state):
    """The same checkpoint with its V2 part at the start (b = 0, s = 1, norms 1): only prompts and gates act."""
    return {k: (torch.zeros_like(v) if "adapter_bias" in k else torch.ones_like(v)
                if "adapter_scale" in k or "norm" in k or "ln_f" in k else v) for k, v in state.items()}


def v2_linear(state, key, x, weight, bias=None):
    """litgpt's AdapterV2Linear: ``adapter_scale * (linear(x) + adapter_bias)``."""
    y = x @ weight.T + (0 if bias is None else bias)
    return state[f"{key}.adapter_scale"] * (y + state[f"{key}.adapter_bias"])


def litgpt_v2_reference(model, tokens, state, layout, start=START, base_norms=False):
    """What litgpt of ``layout`` computes with the adapter_v2 ``state`` on this base's weights (norms from the file,
    or the base's own with ``base_norms``)."""
    config = model.config
    heads, groups, eps = config.num_attention_heads, config.num_key_value_heads, config.rms_norm_eps
    d, theta = config.hidden_size // heads, config.rope_parameters["rope_theta"]

    def norm(x, key, module):
        return rms_norm(x, module.weight if base_norms else state[key], eps)

    h = model.model.embed_tokens.weight[tokens]
    batch, seq, _ = h.shape
    positions = torch.arange(seq).expand(batch, seq)
    for i, layer in enumerate(model.model.layers):
        p, attn, mlp = f"transformer.h.{i}.", layer.self_attn, layer.mlp
        qkv_key = p + QKV[layout]
        weight = fused(attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight, groups, layout)
        bias = None if attn.q_proj.bias is None else fused(attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias,
                                                           groups, layout)
        x = norm(h, p + "norm_1.weight", layer.input_layernorm)
        q, k, v = model_qkv(v2_linear(state, qkv_key, x, weight, bias), layout, heads, groups, d)
        q, k = rotary(q, positions, theta), rotary(k, positions, theta)
        y = (torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d) + causal(seq), -1) @ v).transpose(1, 2)
        if i >= start:
            prefix = state[p + "attn.adapter_wte.weight"][None]
            ak, av = adapter_kv(v2_linear(state, qkv_key, prefix, weight, bias), heads, groups, d)
            ay = (torch.softmax(q @ ak.transpose(-1, -2) / math.sqrt(d), -1) @ av).transpose(1, 2)
            y = y + state[p + "attn.gating_factor"].reshape(1, 1, heads, 1) * ay
        h = h + v2_linear(state, p + "attn.proj", y.reshape(batch, seq, -1), attn.o_proj.weight)
        x = norm(h, p + "norm_2.weight", layer.post_attention_layernorm)
        gate = v2_linear(state, p + "mlp.fc_1", x, mlp.gate_proj.weight)
        h = h + v2_linear(state, p + "mlp.proj", torch.nn.functional.silu(gate) * v2_linear(state, p + "mlp.fc_2", x,
                                                                                           mlp.up_proj.weight),
                          mlp.down_proj.weight)
    return v2_linear(state, "lm_head", norm(h, "transformer.ln_f.weight", model.model.norm), model.lm_head.weight)


def save_litgpt(path, state):
    torch.save({"model": state}, path)
    return path


@pytest.mark.parametrize("family,bias,layout", [
    ("llama-gqa", False, OLD),
    ("llama-gqa", False, NEW),  # prompts re-solved through the V2 bias/scale of other rows
    ("llama-gqa", True, NEW),  # qkv biases of the base as well
    ("llama-mha", False, OLD),
    ("mistral-gqa", False, NEW),  # one key/value head
])
def test_litgpt_adapter_v2_matches_what_that_litgpt_computes(tmp_path, family, bias, layout):
    """An adapter_v2 checkpoint of either fused layout (told by its key names: no --litgpt-layout) imports as our V2
    adapter, lm_head included, whose logits are litgpt's; the V2 part and the layout both matter far beyond the
    tolerance."""
    model = base_model(family, bias)
    state = litgpt_v2_state(model, layout)
    adapter = import_litgpt(model, save_litgpt(tmp_path / "lit_model.pth.adapter_v2", state))
    assert adapter.v2.head and adapter.v2.train_norms and adapter.v2.targets == "all"
    assert adapter.config.gate_activation == "identity" and sorted(adapter.layers) == [1, 2, 3]
    load_foreign_adapter(model, "litgpt", tmp_path / "lit_model.pth.adapter_v2")
    tokens = ids()
    with torch.no_grad():
        expected = litgpt_v2_reference(model, tokens, state, layout, base_norms=False)
        without_v2 = litgpt_v2_reference(model, tokens, identity_v2(state), layout, base_norms=True)
        other_layout = OLD if layout == NEW else NEW  # the same tensors as the other litgpt names and reads them
        other = litgpt_v2_reference(model, tokens, {k.replace(QKV[layout], QKV[other_layout]): v
                                                     for k, v in state.items()}, other_layout)
    torch.testing.assert_close(ours(model, tokens), expected, atol=1e-4, rtol=1e-4)
    assert (expected - without_v2).abs().max() > 1e-2
    if family == "llama-gqa":
        assert (expected - other).abs().max() > 1e-2


def test_litgpt_adapter_v2_head_scale_merges_into_a_tied_head_without_touching_the_embeddings(tmp_path):
    """lm_head's scale on a base whose head is tied to the input embeddings: merging gives the head its own scaled
    weight (the embeddings keep theirs), the logits stay; unmerging ties it back, bit for bit."""
    tied = tiny_model("llama-mha", tie_word_embeddings=True)
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    state = litgpt_v2_state(tied, OLD, head_bias=False)
    load_foreign_adapter(tied, "litgpt", save_litgpt(tmp_path / "a.pth", state))
    embeddings, tokens = tied.model.embed_tokens.weight.detach().clone(), ids()
    before = ours(tied, tokens)
    merge_v2(adapter_v2_state(tied))
    assert tied.lm_head.weight is not tied.model.embed_tokens.weight
    assert torch.equal(tied.model.embed_tokens.weight, embeddings)
    torch.testing.assert_close(ours(tied, tokens), before, atol=1e-5, rtol=1e-5)
    unmerge_v2(adapter_v2_state(tied))
    assert tied.lm_head.weight is tied.model.embed_tokens.weight and torch.equal(ours(tied, tokens), before)


def test_imported_litgpt_v2_converts_to_ours_and_to_merged(base, tmp_path, capsys):
    """litgpt adapter_v2 -> ours -> --to merged: the merged folder (plain transformers, in a process without
    mm-adapter) with its prompt adapter gives the imported adapter's logits; an lm_head bias, which a Llama has no
    place for, is refused in one line naming it."""
    model, _ = load_base(str(base))
    # pre-0.5.5: the 0.5.5+ re-solved prompts are exact through hooks, but ill-conditioned on this tiny square
    # k/v system, so the merged weights' fp32 rounding shows at ~2e-4 there
    litgpt = save_litgpt(tmp_path / "lit_model.pth.adapter_v2", litgpt_v2_state(model, OLD, head_bias=False))
    code, _, err = convert("--from", "litgpt", "--base", base, litgpt, tmp_path / "v2.safetensors", capsys=capsys)
    assert (code, err) == (0, "")
    assert read_adapter(tmp_path / "v2.safetensors").v2.head
    load_adapter(model, tmp_path / "v2.safetensors")
    tokens = torch.arange(3, 12)[None]  # within the tiny tokenizer's vocabulary
    expected = ours(model, tokens)
    code, out, err = convert("--to", "merged", "--base", base, tmp_path / "v2.safetensors", tmp_path / "merged",
                             capsys=capsys)
    assert (code, out, err) == (0, f"wrote {tmp_path / 'merged'}\n", "")
    subprocess.run([sys.executable, "-c", PLAIN_LOAD, str(tmp_path / "merged"), str(tmp_path / "plain.pt")],
                   check=True)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    load_adapter(plain, tmp_path / "merged" / PROMPT_ADAPTER)
    torch.testing.assert_close(ours(plain, tokens), expected, atol=1e-5, rtol=1e-5)
    alone = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()  # as the process without mm-adapter
    assert torch.equal(torch.load(tmp_path / "plain.pt"), ours(alone, IDS))

    biased = save_litgpt(tmp_path / "biased.pth", litgpt_v2_state(model, NEW))
    assert convert("--from", "litgpt", "--base", base, biased, tmp_path / "b.safetensors", capsys=capsys)[0] == 0
    code, out, err = convert("--to", "merged", "--base", base, tmp_path / "b.safetensors", tmp_path / "m2",
                             capsys=capsys)
    assert code == 2 and out == "" and err.count("\n") == 1 and not (tmp_path / "m2").exists()
    assert "lm_head: a llama model has no bias there" in err and "AdapterV2Config.head" in err


def refused_by_command(capsys, tmp_path, *args, match):
    """``mm-adapter convert ARGS OUTPUT``: exit 2, one ``error:`` line matching, no OUTPUT written."""
    output = tmp_path / "out.safetensors"
    code, out, err = convert(*args, output, capsys=capsys)
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert re.match(f"error: .*{match}", err), err
    assert not output.exists()


def test_litgpt_adapter_v2_bad_input_is_one_line_exit_2(base, tmp_path, capsys):
    """A layout flag that contradicts the key names, both names at once, a missing tensor, a GPT-NeoX MLP key, a
    wrong-sized fused qkv: one line each through the command, nothing written."""
    model, _ = load_base(str(base))
    good = litgpt_v2_state(model, NEW)
    path = save_litgpt(tmp_path / "good.pth", good)
    args = ("--from", "litgpt", "--base", base)
    refused_by_command(capsys, tmp_path, *args, "--litgpt-layout", OLD, path,
                       match=r"transformer.h.\d.attn.qkv.adapter_bias is how litgpt 0.5.5\+ names the fused qkv, but "
                             r"--litgpt-layout pre-0.5.5 was given")
    mixed = dict(good, **{"transformer.h.0.attn.attn.adapter_bias": good["transformer.h.0.attn.qkv.adapter_bias"]})
    refused_by_command(capsys, tmp_path, *args, save_litgpt(tmp_path / "mixed.pth", mixed),
                       match=r"holds the fused qkv's bias/scale under one name; found transformer.h.0.attn.attn")
    missing = {k: v for k, v in good.items() if k != "transformer.h.2.mlp.fc_2.adapter_scale"}
    refused_by_command(capsys, tmp_path, *args, save_litgpt(tmp_path / "missing.pth", missing),
                       match=r"missing key 'transformer.h.2.mlp.fc_2.adapter_scale'")
    neox = dict(good, **{"transformer.h.0.mlp.fc.adapter_bias": torch.zeros(96)})
    refused_by_command(capsys, tmp_path, *args, save_litgpt(tmp_path / "neox.pth", neox),
                       match=r"unexpected key 'transformer.h.0.mlp.fc.adapter_bias': not part of a litgpt "
                             r"adapter_v2 checkpoint for this base")
    short = dict(good, **{"transformer.h.1.attn.qkv.adapter_scale": torch.ones(100)})
    refused_by_command(capsys, tmp_path, *args, save_litgpt(tmp_path / "short.pth", short),
                       match=r"transformer.h.1.attn.qkv.adapter_scale has shape \[100\], expected \[128\]")
    vocab = dict(good, **{"lm_head.adapter_scale": torch.ones(7)})
    refused_by_command(capsys, tmp_path, *args, save_litgpt(tmp_path / "vocab.pth", vocab),
                       match=r"lm_head.adapter_scale has shape \[7\], but this base's lm_head.scale has \[\d+\]")


# ---- the official V2 release ----------------------------------------------------------------------------------------

def official_v2_state(model, n_adapted=3, adapter_len=L, seed=8):
    """The V2 release's language model tensors (``llama.`` keys, Meta row order), as ``BIAS-7B.pth`` holds them."""
    g = torch.Generator().manual_seed(seed)
    config = model.config
    heads, hidden, inner = config.num_attention_heads, config.hidden_size, config.intermediate_size
    state = {"adapter_query.weight": torch.randn(adapter_len * n_adapted, hidden, generator=g),
             "llama.norm.weight": noisy(g, hidden, 1.0)}
    for i in range(config.num_hidden_layers):
        p = f"llama.layers.{i}."
        state[p + "attention.gate"] = torch.randn(1, heads, 1, 1, generator=g)
        for name, size in (("attention.wq", hidden), ("attention.wo", hidden), ("feed_forward.w1", inner),
                           ("feed_forward.w3", inner), ("feed_forward.w2", hidden)):
            state[f"{p}{name}.bias"] = noisy(g, size, 0.0)
        state[p + "attention.wq.bias"] *= 30  # queries of the tiny base are small: make its row order visible
        for norm in ("attention_norm", "ffn_norm"):
            state[f"{p}{norm}.weight"] = noisy(g, hidden, 1.0)
    return state


def official_v2_reference(model, tokens, state, adapter_len=L):
    """``llama_adapter_v2_multimodal7b``'s forward on Meta-layout weights without an image: the top layers get their
    block of ``adapter_query`` through wk/wv, ``gate.tanh() * softmax(q ak^T / sqrt(d)) av``."""
    config = model.config
    heads, n_layers, eps = config.num_attention_heads, config.num_hidden_layers, config.rms_norm_eps
    d, theta = config.hidden_size // heads, config.rope_parameters["rope_theta"]
    queries = state["adapter_query.weight"]
    prompts = queries.reshape(-1, adapter_len, queries.shape[1])
    first = n_layers - prompts.shape[0]
    h = model.model.embed_tokens.weight[tokens]
    batch, seq, _ = h.shape
    positions = torch.arange(seq)
    for i, layer in enumerate(model.model.layers):
        p, attn, mlp = f"llama.layers.{i}.", layer.self_attn, layer.mlp
        wq, wk = hf_to_meta_rotary(attn.q_proj.weight, heads), hf_to_meta_rotary(attn.k_proj.weight, heads)
        x = rms_norm(h, state[p + "attention_norm.weight"], eps)
        q = (x @ wq.T + state[p + "attention.wq.bias"]).view(batch, seq, heads, d)
        q = torch.stack([meta_rotary(row, positions, theta) for row in q]).transpose(1, 2)
        k = torch.stack([meta_rotary(row, positions, theta) for row in (x @ wk.T).view(batch, seq, heads, d)])
        k, v = k.transpose(1, 2), (x @ attn.v_proj.weight.T).view(batch, seq, heads, d).transpose(1, 2)
        out = torch.softmax(q @ k.transpose(2, 3) / math.sqrt(d) + causal(seq), -1) @ v
        if i >= first:
            prompt = prompts[i - first]
            ak = (prompt @ wk.T).view(1, adapter_len, heads, d).transpose(1, 2)
            av = (prompt @ attn.v_proj.weight.T).view(1, adapter_len, heads, d).transpose(1, 2)
            scores = torch.softmax(q @ ak.transpose(2, 3) / math.sqrt(d), -1)
            out = out + (state[p + "attention.gate"].tanh() * scores) @ av
        h = h + out.transpose(1, 2).reshape(batch, seq, -1) @ attn.o_proj.weight.T + state[p + "attention.wo.bias"]
        x = rms_norm(h, state[p + "ffn_norm.weight"], eps)
        act = torch.nn.functional.silu(x @ mlp.gate_proj.weight.T + state[p + "feed_forward.w1.bias"])
        up = x @ mlp.up_proj.weight.T + state[p + "feed_forward.w3.bias"]
        h = h + (act * up) @ mlp.down_proj.weight.T + state[p + "feed_forward.w2.bias"]
    return linear(model.lm_head, rms_norm(h, state["llama.norm.weight"], eps))


def save_official(path, state):
    torch.save({"model": state, "config": {"w_bias": True, "w_lora": False, "lora_rank": 16}}, path)
    return path


def test_official_v2_release_matches_the_official_forward_on_meta_weights(tmp_path):
    """The V2 release's language model part (biases, norms, prompts, tanh gates) imports as our V2 adapter whose
    logits are the official forward's; the wq bias in Meta row order really needs its permutation, and the V2 part
    really matters."""
    model = tiny_model("llama-mha")
    state = official_v2_state(model)
    adapter = import_official(model, save_official(tmp_path / "BIAS-7B.pth", state), adapter_len=L)
    assert adapter.config.gate_activation == "tanh" and sorted(adapter.layers) == [1, 2, 3]
    assert adapter.v2.targets == "q_proj,o_proj,gate_proj,up_proj,down_proj" and not adapter.v2.head
    load_foreign_adapter(model, "official", tmp_path / "BIAS-7B.pth", adapter_len=L)
    tokens = ids()
    unpermuted = dict(state)
    for i in range(4):
        key = f"llama.layers.{i}.attention.wq.bias"
        unpermuted[key] = hf_to_meta_rotary(state[key][:, None], 4)[:, 0]  # the bias our way round, read as Meta's
    plain = {k: torch.zeros_like(v) if k.endswith(".bias") else torch.ones_like(v) if "norm" in k else v
             for k, v in state.items()}
    with torch.no_grad():
        expected = official_v2_reference(model, tokens, state)
        wrong_rows = official_v2_reference(model, tokens, unpermuted)
        without_v2 = official_v2_reference(model, tokens, plain)
    torch.testing.assert_close(ours(model, tokens), expected, atol=1e-4, rtol=1e-4)
    assert (expected - wrong_rows).abs().max() > 1e-2 and (expected - without_v2).abs().max() > 1e-2


def test_official_v2_bad_input_is_one_line_exit_2(base, tmp_path, capsys):
    """The visual stack, LoRA, --official-gate identity, a missing gate, a bias of another width, a layer beyond the
    base, a full model's weight, the chat65b layout (input scales): one line each through the command, naming the
    key, nothing written."""
    model, _ = load_base(str(base))
    good = official_v2_state(model, adapter_len=10)
    args = ("--from", "official", "--base", base)

    def case(name, state, *flags, match):
        refused_by_command(capsys, tmp_path, *args, *flags, save_official(tmp_path / f"{name}.pth", state),
                           match=match)

    case("visual", dict(good, **{"visual_blocks.0.attn.qkv.weight": torch.zeros(3, 3)}),
         match=r"visual_blocks.0.attn.qkv.weight is part of the official V2 visual stack .* only its language model "
               r"part can be imported")
    case("lora", dict(good, **{"llama.layers.0.attention.lora_wq_l1.weight": torch.zeros(16, 64)}),
         match=r"llama.layers.0.attention.lora_wq_l1.weight is the official V2 LoRA variant \(LORA-BIAS-7B\)")
    case("gate", good, "--official-gate", "identity",
         match=r"an official LLaMA-Adapter V2 file, whose code applies tanh .* --official-gate identity does not")
    case("nogate", {k: v for k, v in good.items() if k != "llama.layers.2.attention.gate"},
         match=r"missing key 'llama.layers.2.attention.gate' \(adapted layer 2\)")
    case("wide", dict(good, **{"llama.layers.1.feed_forward.w2.bias": torch.zeros(32)}),
         match=r"llama.layers.1.feed_forward.w2.bias has shape \[32\], but this base's model.layers.1.mlp.down_proj"
               r".bias has \[64\]")
    case("deep", dict(good, **{"llama.layers.9.ffn_norm.weight": torch.ones(64)}),
         match=r"unexpected key 'llama.layers.9.ffn_norm.weight': the base has only 4 layers")
    case("base", dict(good, **{"llama.layers.0.attention.wq.weight": torch.zeros(64, 64)}),
         match=r"unexpected key 'llama.layers.0.attention.wq.weight'")
    chat65b = {"adapter_query.weight": torch.zeros(20, 64), "layers.3.attention.gate": torch.zeros(1, 4, 1, 1),
               "layers.3.attention.wq_bias": torch.zeros(64), "layers.3.attention.wq_scale": torch.ones(64)}
    case("chat65b", chat65b, match=r"layers.3.attention.wq_bias is the official llama_adapter_v2_chat65b layout, "
                                   r"whose \*_scale multiply each linear layer's input")
    with pytest.raises(MMAdapterError, match="no such file"):
        import_official(model, tmp_path / "absent.pth")
