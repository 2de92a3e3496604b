"""Official v1 adapters: parity with an explicit reference of the published forward, and one-line refusals
naming the key or size that is wrong (litgpt: ``test_interop_litgpt.py``).

The reference below is written from OpenGVLab/LLaMA-Adapter ``llama/model.py`` (Meta weight layout,
complex interleaved rotary, gate * softmax over prompts); it shares no code with mm_adapter.
"""

import math

import pytest
import torch
from safetensors.torch import save_file
from test_base_loading import hf_to_meta_rotary, meta_rotary

from mm_adapter import MMAdapterError
from mm_adapter.interop import import_official, load_foreign_adapter
from reference import linear, rms_norm
from tiny import tiny_model

L, SEQ = 3, 9


def ids(batch=2, seed=1):
    return torch.randint(3, 97, (batch, SEQ), generator=torch.Generator().manual_seed(seed))


def ours(model, tokens):
    with torch.no_grad():
        return model(input_ids=tokens).logits


def decoder(model, tokens, attention):
    """The Llama block loop; ``attention(index, layer, x)`` returns the pre-o_proj output (B, T, hidden)."""
    eps = model.config.rms_norm_eps
    h = model.model.embed_tokens.weight[tokens]
    for index, layer in enumerate(model.model.layers):
        h = h + linear(layer.self_attn.o_proj, attention(index, layer, rms_norm(h, layer.input_layernorm.weight, eps)))
        x = rms_norm(h, layer.post_attention_layernorm.weight, eps)
        mlp = layer.mlp
        h = h + linear(mlp.down_proj, torch.nn.functional.silu(linear(mlp.gate_proj, x)) * linear(mlp.up_proj, x))
    return rms_norm(h, model.model.norm.weight, eps) @ model.lm_head.weight.T


def causal(seq):
    return torch.full((seq, seq), float("-inf")).triu(1)


def official_reference(model, tokens, queries, gates, adapter_len, tanh=False):
    """Official v1 inference: Meta layout, interleaved rotary, ``gate * softmax(q ak^T / sqrt(d)) av``."""
    heads, n_layers = model.config.num_attention_heads, model.config.num_hidden_layers
    d, theta = model.config.hidden_size // heads, model.config.rope_parameters["rope_theta"]
    n_adapted = queries.shape[0] // adapter_len
    prompts = queries.reshape(n_adapted, adapter_len, queries.shape[1])
    positions = torch.arange(tokens.shape[1])

    def attention(index, layer, x):
        attn = layer.self_attn
        wq, wk = hf_to_meta_rotary(attn.q_proj.weight, heads), hf_to_meta_rotary(attn.k_proj.weight, heads)
        batch, seq, _ = x.shape
        q = torch.stack([meta_rotary(row, positions, theta) for row in (x @ wq.T).view(batch, seq, heads, d)])
        k = torch.stack([meta_rotary(row, positions, theta) for row in (x @ wk.T).view(batch, seq, heads, d)])
        v = (x @ attn.v_proj.weight.T).view(batch, seq, heads, d)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        out = torch.softmax(q @ k.transpose(2, 3) / math.sqrt(d) + causal(seq), -1) @ v
        if index >= n_layers - n_adapted:
            prompt = prompts[index - (n_layers - n_adapted)]
            ak = (prompt @ wk.T).view(1, adapter_len, heads, d).transpose(1, 2)
            av = (prompt @ attn.v_proj.weight.T).view(1, adapter_len, heads, d).transpose(1, 2)
            gate = gates[index].reshape(1, -1, 1, 1)
            gate = gate.tanh() if tanh else gate
            out = out + (gate * torch.softmax(q @ ak.transpose(2, 3) / math.sqrt(d), -1)) @ av
        return out.transpose(1, 2).reshape(batch, seq, -1)

    return decoder(model, tokens, attention)


def official_state(model, n_adapted=2, adapter_len=L, seed=5, scalar_layer=None):
    """An official-format dict: adapter_query.weight and a gate for *every* layer, as the extraction script saves."""
    g = torch.Generator().manual_seed(seed)
    heads, n_layers, dim = model.config.num_attention_heads, model.config.num_hidden_layers, model.config.hidden_size
    state = {"adapter_query.weight": torch.randn(adapter_len * n_adapted, dim, generator=g)}
    for i in range(n_layers):
        state[f"layers.{i}.attention.gate"] = torch.randn(1, heads, 1, 1, generator=g)
    if scalar_layer is not None:
        state[f"layers.{scalar_layer}.attention.gate"] = torch.tensor(0.7)
    return state


@pytest.mark.parametrize("gate", ["identity", "tanh"])
def test_official_release_matches_the_official_forward_on_meta_weights(tmp_path, gate):
    model = tiny_model("llama-mha")
    state = official_state(model, scalar_layer=3)
    torch.save(state, tmp_path / "release.pth")
    adapter = load_foreign_adapter(model, "official", tmp_path / "release.pth", adapter_len=L, gate_activation=gate)
    assert sorted(adapter.layers) == [2, 3] and adapter.config.gate_activation == gate
    assert torch.equal(adapter.layers[3]["gate"], torch.full((4,), 0.7))  # scalar broadcast to every head
    assert torch.equal(adapter.layers[2]["prompt"], state["adapter_query.weight"][:L])  # layer-major rows
    gates = {i: state[f"layers.{i}.attention.gate"] for i in range(4)}
    tokens = ids()
    with torch.no_grad():
        expected = official_reference(model, tokens, state["adapter_query.weight"], gates, L, tanh=gate == "tanh")
        base = official_reference(model, tokens, state["adapter_query.weight"][:0], gates, L)
    torch.testing.assert_close(ours(model, tokens), expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours(tiny_model("llama-mha"), tokens), base, atol=1e-4, rtol=1e-4)  # reference's own check
    assert (expected - base).abs().max() > 1e-2  # the adapter really changes the outputs


def refused(function, *args, match, **kwargs):
    with pytest.raises(MMAdapterError, match=match) as error:
        function(*args, **kwargs)
    assert "\n" not in str(error.value)
    return str(error.value)


def test_official_bad_input_names_the_key_or_size(tmp_path):
    model = tiny_model("llama-mha")
    good = official_state(model)

    def write(name, state):
        torch.save(state, tmp_path / name)
        return tmp_path / name

    wide = dict(good, **{"adapter_query.weight": torch.randn(2 * L, 32)})
    refused(import_official, model, write("wide.pth", wide), adapter_len=L,
            match=r"adapter_query.weight rows 0-2 has shape \[3, 32\], but the base's hidden size is 64")
    deep = dict(good, **{"adapter_query.weight": torch.randn(6 * L, 64)})
    refused(import_official, model, write("deep.pth", deep), adapter_len=L,
            match=r"18 rows = 3 prompts x 6 layers, but the base has only 4 layers")
    refused(import_official, model, write("rows.pth", good), adapter_len=4, match="6 rows, not a multiple of")
    missing = {k: v for k, v in good.items() if k != "layers.3.attention.gate"}
    refused(import_official, model, write("missing.pth", missing), adapter_len=L,
            match=r"missing key 'layers.3.attention.gate'")
    refused(import_official, model, write("noquery.pth", {"layers.0.attention.gate": torch.zeros(1)}),
            match=r"missing key 'adapter_query.weight'")
    extra = dict(good, **{"layers.3.attention.wq.weight": torch.zeros(64, 64)})
    refused(import_official, model, write("extra.pth", extra), adapter_len=L,
            match=r"unexpected key 'layers.3.attention.wq.weight'")
    beyond = dict(good, **{"layers.31.attention.gate": torch.zeros(1, 4, 1, 1)})
    refused(import_official, model, write("beyond.pth", beyond), adapter_len=L,
            match=r"unexpected key 'layers.31.attention.gate': the base has only 4 layers")
    heads = dict(good, **{"layers.2.attention.gate": torch.zeros(1, 32, 1, 1)})
    refused(import_official, model, write("heads.pth", heads), adapter_len=L,
            match=r"layers.2.attention.gate has shape \[1, 32, 1, 1\], expected \[1, 4, 1, 1\] or \[\] or \[1\]")
    caption = {"cap_adapter_query.weight": torch.zeros(30, 64)}
    refused(import_official, model, write("caption.pth", caption), match="caption adapter")
    path = write("ok.pth", good)
    (tmp_path / "truncated.pth").write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    refused(import_official, model, tmp_path / "truncated.pth", adapter_len=L, match="truncated or corrupt")
    save_file(good, tmp_path / "ok.safetensors")
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "ok.safetensors").read_bytes()[:200])
    refused(import_official, model, tmp_path / "cut.safetensors", adapter_len=L, match="truncated or corrupt")
    assert sorted(import_official(model, tmp_path / "ok.safetensors", adapter_len=L).layers) == [2, 3]
