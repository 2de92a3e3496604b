"""Meta-format LLaMA checkpoints (``consolidated.*.pth`` + ``params.json`` + ``tokenizer.model``).

Converted in memory to the transformers Llama layout. Meta's rotary embedding rotates adjacent
pairs (interleaved), transformers' rotates the two halves of each head, so the rows of the query
and key projections are permuted per head. Model-parallel shards are concatenated along the
dimension their layer type was split on.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from mm_adapter.errors import MMAdapterError
from mm_adapter.files.text import BOOLEAN, POSITIVE_INT, POSITIVE_NUMBER, check_fields, read_json, regular_file_size

REQUIRED_PARAMS = {"dim": POSITIVE_INT, "n_layers": POSITIVE_INT, "n_heads": POSITIVE_INT, "norm_eps": POSITIVE_NUMBER}
OPTIONAL_PARAMS = {"n_kv_heads": POSITIVE_INT, "rope_theta": POSITIVE_NUMBER, "max_seq_len": POSITIVE_INT,
                   "use_scaled_rope": BOOLEAN}

# Meta name suffix -> (transformers name template, concat dim across model-parallel shards; None = replicated)
_LAYER_KEYS = {
    "attention.wq.weight": ("self_attn.q_proj.weight", 0),
    "attention.wk.weight": ("self_attn.k_proj.weight", 0),
    "attention.wv.weight": ("self_attn.v_proj.weight", 0),
    "attention.wo.weight": ("self_attn.o_proj.weight", 1),
    "feed_forward.w1.weight": ("mlp.gate_proj.weight", 0),
    "feed_forward.w2.weight": ("mlp.down_proj.weight", 1),
    "feed_forward.w3.weight": ("mlp.up_proj.weight", 0),
    "attention_norm.weight": ("input_layernorm.weight", None),
    "ffn_norm.weight": ("post_attention_layernorm.weight", None),
}
_TOP_KEYS = {"norm.weight": ("model.norm.weight", None), "output.weight": ("lm_head.weight", 0)}
_LAYER_PATTERN = re.compile(r"^layers\.(\d+)\.(.+)$")


def is_meta_folder(path: Path) -> bool:
    """A folder with a params.json (of any kind: reading it refuses a folder or FIFO in one line)."""
    return path.is_dir() and os.path.lexists(path / "params.json")


def meta_to_hf_rotary(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder each head's rows from interleaved pairs (Meta) to rotate-half halves (transformers)."""
    rows, cols = weight.shape
    return weight.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def read_params(folder: Path) -> dict:
    """``params.json``, type-checked: every size the conversion uses comes from here."""
    path = folder / "params.json"
    params = read_json(path, "Meta params", expect=dict)
    check_fields(params, path, "Meta params", REQUIRED_PARAMS, OPTIONAL_PARAMS)
    return params


def _load_shards(folder: Path) -> list[dict[str, torch.Tensor]]:
    from mm_adapter.files.safe_load import load_torch_file

    paths = sorted(folder.glob("consolidated.*.pth"))
    if not paths:
        raise MMAdapterError(f"{folder}: Meta-format folder (params.json) has no consolidated.*.pth weights")
    return [load_torch_file(path) for path in paths]


def _merge(shards: list[dict[str, torch.Tensor]], key: str, dim: int | None, full_width: int,
           where: Path) -> torch.Tensor:
    """One tensor from every shard, joined along ``dim`` (None: replicated, 1-D); refuses a missing or misshapen one."""
    try:
        parts = [shard[key] for shard in shards]
    except KeyError:
        raise MMAdapterError(f"{where}: Meta checkpoint is missing tensor {key!r}") from None
    ndim = 1 if dim is None else 2
    bad = next((part for part in parts if part.ndim != ndim), None)
    if bad is not None:
        raise MMAdapterError(f"{where}: Meta tensor {key!r} has shape {list(bad.shape)}, expected {ndim} dimension(s)")
    if len(parts) == 1 or dim is None:
        return parts[0]
    if key == "tok_embeddings.weight":  # LLaMA 1/2 split the width, LLaMA 3 the vocabulary
        dim = 0 if parts[0].shape[1] == full_width else 1
    return torch.cat(parts, dim=dim)


def convert_state_dict(shards: list[dict[str, torch.Tensor]], params: dict, where: Path = Path("Meta checkpoint")
                       ) -> dict[str, torch.Tensor]:
    n_heads, dim = params["n_heads"], params["dim"]
    n_kv_heads = params.get("n_kv_heads") or n_heads
    state = {"model.embed_tokens.weight": _merge(shards, "tok_embeddings.weight", 1, dim, where)}
    for meta_key, (hf_key, concat) in _TOP_KEYS.items():
        state[hf_key] = _merge(shards, meta_key, concat, dim, where)
    for layer in range(params["n_layers"]):
        for suffix, (hf_suffix, concat) in _LAYER_KEYS.items():
            tensor = _merge(shards, f"layers.{layer}.{suffix}", concat, dim, where)
            if suffix == "attention.wq.weight":
                tensor = meta_to_hf_rotary(tensor, n_heads)
            elif suffix == "attention.wk.weight":
                tensor = meta_to_hf_rotary(tensor, n_kv_heads)
            state[f"model.layers.{layer}.{hf_suffix}"] = tensor
    expected = {*_TOP_KEYS, "tok_embeddings.weight"} | {
        f"layers.{i}.{s}" for i in range(params["n_layers"]) for s in _LAYER_KEYS
    }
    extra = sorted(k for k in shards[0] if k not in expected and not k.startswith("rope.freqs"))
    if extra:
        raise MMAdapterError(f"{where}: Meta checkpoint has unexpected tensor(s) {', '.join(extra[:3])}; "
                             "is params.json right?")
    return state


def hf_config(params: dict, state: dict[str, torch.Tensor], where: Path = Path("Meta checkpoint")) -> LlamaConfig:
    vocab_size, dim = state["model.embed_tokens.weight"].shape
    if dim != params["dim"]:
        raise MMAdapterError(f"{where}: params.json says dim={params['dim']} but tok_embeddings has width {dim}")
    rope: dict = {"rope_type": "default", "rope_theta": float(params.get("rope_theta") or 10000.0)}
    if params.get("use_scaled_rope"):
        rope.update(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                    original_max_position_embeddings=8192)
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=dim,
        intermediate_size=state["model.layers.0.mlp.gate_proj.weight"].shape[0],
        num_hidden_layers=params["n_layers"],
        num_attention_heads=params["n_heads"],
        num_key_value_heads=params.get("n_kv_heads") or params["n_heads"],
        rms_norm_eps=params["norm_eps"],
        max_position_embeddings=params.get("max_seq_len") or 4096,
        rope_parameters=rope,
        tie_word_embeddings=False,
    )


def load_meta_model(folder: Path, dtype: torch.dtype | None = None) -> LlamaForCausalLM:
    params = read_params(folder)
    shards = _load_shards(folder)
    state = convert_state_dict(shards, params, folder)
    config = hf_config(params, state, folder)
    dtype = dtype or state["model.embed_tokens.weight"].dtype
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    # The rotary inverse frequencies are a non-persistent buffer: rebuild it off the meta device, in fp32.
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config)
    return model


def load_meta_tokenizer(folder: Path):
    """The sentencepiece ``tokenizer.model`` as a transformers Llama tokenizer (BOS added, as Meta's code does)."""
    from transformers import LlamaTokenizer

    if not os.path.lexists(folder / "tokenizer.model"):
        raise MMAdapterError(f"{folder}: Meta-format folder has no tokenizer.model")
    regular_file_size(folder / "tokenizer.model", "sentencepiece tokenizer")
    return LlamaTokenizer.from_pretrained(folder, legacy=False, add_bos_token=True)
