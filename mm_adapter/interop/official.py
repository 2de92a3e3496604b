"""The official LLaMA-Adapter v1 release (``llama_adapter_len10_layer30_release.pth``).

Format (OpenGVLab/LLaMA-Adapter ``llama/model.py`` and ``alpaca_finetuning_v1``):

* ``adapter_query.weight``: [adapter_len * adapter_layer, dim], one ``nn.Embedding``; the forward
  reshapes it to (adapter_layer, adapter_len, dim) and feeds block ``k`` to the k-th of the top
  ``adapter_layer`` layers, so rows are layer-major from the lowest adapted layer up.
* ``layers.{i}.attention.gate``: [1, n_heads, 1, 1] (i = absolute layer index). The extraction
  script saves the gates of *every* layer; those below the adapted ones are never used.
* The file does not store adapter_len; the official code takes it from ``ModelArgs`` (10).
* Inference (``llama/model.py``) scales the separately-softmaxed prompt attention by the raw gate
  (``gate_activation="identity"``); training (``alpaca_finetuning_v1``) uses ``gate.tanh()``.

Its prompts live in the hidden space and meet the weights only through ``wk``/``wv``; our Meta
loader permutes ``wq``/``wk`` rows identically within each head, which leaves every query-key dot
product unchanged, so the prompts apply to the converted model as they are.

The caption adapter (``cap_adapter_query.weight``, ``llama_adapter_len10_layer30_caption_vit_l.pth``)
adds CLIP features from its own vision model to the prompts; we refuse it rather than import half.

The V2 release (OpenGVLab/LLaMA-Adapter ``llama_adapter_v2_multimodal7b``: ``llama/llama.py``,
``llama/llama_adapter.py``; ``BIAS-7B.pth``) is a torch pickle ``{"model": {...}, "config": {...}}``:

* ``adapter_query.weight`` [query_len * query_layer, dim] (10 x 31 on LLaMA-7B), layer-major as in v1;
* ``llama.layers.{i}.attention.gate`` [1, n_heads, 1, 1], applied as ``gate.tanh()`` in training and inference;
* with ``w_bias`` (phase "finetune"): ``nn.Linear`` biases ``llama.layers.{i}.attention.wq.bias`` and ``wo.bias``
  and ``llama.layers.{i}.feed_forward.w1|w2|w3.bias`` (no scale: ``y = W x + b``), and the trained RMSNorm weights
  ``llama.layers.{i}.attention_norm.weight``, ``ffn_norm.weight``, ``llama.norm.weight``;
* the visual stack (``clip_proj``, ``clip_proj_norm``, ``visual_query``, ``visual_blocks``, ``visual_proj``,
  ``visual_proj_norm``), whose output is added to every adapted layer's prompts; it needs the official CLIP
  ViT-L/14 pipeline, so a file holding it is refused, as is LoRA (``lora_*``, ``new_gate``: LORA-BIAS-7B).

The official code loads the base first and this file over it (``strict=False``), so a bias or norm the file does
not hold is the base's (0 for a bias): the import leaves those at their starting values. ``wq``'s rows are in Meta's
interleaved rotary order: its bias is permuted as our Meta loader permutes ``wq``.
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
from mm_adapter.model.config import AdapterV2Config
from mm_adapter.model.meta_format import meta_to_hf_rotary

PROMPT_KEY = "adapter_query.weight"
CAPTION_KEY = "cap_adapter_query.weight"
GATE_KEY = re.compile(r"^layers\.(\d+)\.attention\.(gate)$")
DEFAULT_ADAPTER_LEN = 10
V2_PREFIX = "llama."  # the V2 release's language model keys
V2_KEY = re.compile(r"^llama\.layers\.(\d+)\.(attention\.gate|attention\.w[qkvo]\.bias|feed_forward\.w[123]\.bias|"
                    r"attention_norm\.weight|ffn_norm\.weight)$")
V2_FINAL_NORM = "llama.norm.weight"
CHAT65B_KEY = re.compile(r"^layers\.\d+\.(attention\.w[qkvo]|feed_forward\.w[123])_(bias|scale)$")
VISUAL = ("clip.", "clip_proj.", "clip_proj_norm.", "visual_query.", "visual_blocks.", "visual_proj.",
          "visual_proj_norm.")
# Meta's module names -> transformers' (our Meta loader's mapping)
LINEARS = {"attention.wq": ("self_attn", "q_proj"), "attention.wk": ("self_attn", "k_proj"),
           "attention.wv": ("self_attn", "v_proj"), "attention.wo": ("self_attn", "o_proj"),
           "feed_forward.w1": ("mlp", "gate_proj"), "feed_forward.w3": ("mlp", "up_proj"),
           "feed_forward.w2": ("mlp", "down_proj")}
ROTARY = ("attention.wq", "attention.wk")  # rows in Meta's interleaved rotary order
V2_BIASES = ("q_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # w_bias: wq, wo, w1, w2, w3


def import_official(model: nn.Module, path: str | Path, adapter_len: int = DEFAULT_ADAPTER_LEN,
                    gate_activation: str | None = None) -> AdapterFile:
    """Read an official v1 adapter file, or the language-model part of the V2 release, as our adapter for
    ``model`` (checked, not yet applied).

    ``gate_activation`` (v1 only): "identity" (default) reproduces the official v1 inference code; "tanh" its
    training code. The V2 code applies tanh in both, so a V2 file is imported with "tanh" and refuses "identity".
    """
    path = Path(path)
    tensors = read_tensors(path, wrapper="model", beside=frozenset({"config"}))
    if any(key.startswith(V2_PREFIX) for key in tensors):
        if gate_activation not in (None, "tanh"):
            raise MMAdapterError(f"{path}: an official LLaMA-Adapter V2 file, whose code applies tanh to its gates "
                                 f"in training and inference alike; --official-gate {gate_activation} does not apply")
        return _import_v2(model, path, tensors, adapter_len)
    gate_activation = gate_activation or "identity"
    chat65b = next((key for key in sorted(tensors) if CHAT65B_KEY.match(key)), None)
    if chat65b is not None:
        raise MMAdapterError(f"{path}: {chat65b} is the official llama_adapter_v2_chat65b layout, whose *_scale "
                             "multiply each linear layer's input (W (s * x) + b); our V2 scales outputs, which cannot "
                             "hold that for q/k/v and the MLP, so it is not imported")
    if CAPTION_KEY in tensors:
        raise MMAdapterError(f"{path}: {CAPTION_KEY} is the official caption adapter, whose prompts need its CLIP "
                             f"vision model; only the instruction adapter ({PROMPT_KEY}) can be imported")
    if PROMPT_KEY not in tensors:
        raise MMAdapterError(f"{path}: missing key {PROMPT_KEY!r}; not an official LLaMA-Adapter v1 file")
    blocks = _prompt_blocks(model, path, tensors[PROMPT_KEY], adapter_len)
    gates = split_keys(path, tensors, GATE_KEY, allowed={PROMPT_KEY})
    layers = _layers(model, path, blocks, {index: fields["gate"] for index, fields in gates.items()}, adapter_len)
    n_layers = len(decoder_layers(model))
    for index, fields in gates.items():
        if index >= n_layers:
            raise MMAdapterError(f"{path}: unexpected key {fields['gate'][0]!r}: the base has only {n_layers} layers")
    return build_adapter(model, path, layers, gate_activation)


def _prompt_blocks(model: nn.Module, path: Path, queries: torch.Tensor, adapter_len: int) -> torch.Tensor:
    """``adapter_query.weight`` as (adapted layers, adapter_len, dim), its row count checked against the base."""
    if queries.ndim != 2:
        raise MMAdapterError(f"{path}: {PROMPT_KEY} has shape {list(queries.shape)}, expected "
                             "[adapter_len * adapter_layers, dim]")
    rows = queries.shape[0]
    if adapter_len < 1 or rows % adapter_len:
        raise MMAdapterError(f"{path}: {PROMPT_KEY} has {rows} rows, not a multiple of adapter_len={adapter_len}")
    n_adapted, n_layers = rows // adapter_len, len(decoder_layers(model))
    if n_adapted > n_layers:
        raise MMAdapterError(f"{path}: {PROMPT_KEY} has {rows} rows = {adapter_len} prompts x {n_adapted} layers, "
                             f"but the base has only {n_layers} layers")
    return queries.reshape(n_adapted, adapter_len, queries.shape[1])


def _layers(model: nn.Module, path: Path, blocks: torch.Tensor, gates: dict, adapter_len: int,
            prefix: str = "") -> dict[int, ForeignLayer]:
    """The top ``len(blocks)`` layers' prompts and gates (``gates``: layer index -> (key, tensor))."""
    heads, n_layers = model.config.get_text_config().num_attention_heads, len(decoder_layers(model))
    layers = {}
    for block, index in enumerate(range(n_layers - len(blocks), n_layers)):
        if index not in gates:
            raise MMAdapterError(f"{path}: missing key '{prefix}layers.{index}.attention.gate' (adapted layer "
                                 f"{index})")
        key, gate = gates[index]
        expect_shape(path, key, gate, (1, heads, 1, 1), (), (1,))
        rows_name = f"{PROMPT_KEY} rows {block * adapter_len}-{(block + 1) * adapter_len - 1}"
        layers[index] = ForeignLayer(blocks[block], gate, rows_name, key)
    return layers


def _import_v2(model: nn.Module, path: Path, tensors: dict, adapter_len: int) -> AdapterFile:
    """The V2 release's language model part: prompts, tanh gates, biases (as V2 biases with scale 1), norms."""
    for key in sorted(tensors):
        if key.startswith(VISUAL):
            raise MMAdapterError(f"{path}: {key} is part of the official V2 visual stack (CLIP ViT-L/14 features "
                                 "through clip_proj, visual_query and visual_blocks, added to every adapted layer's "
                                 "prompts), which needs the official CLIP pipeline; only its language model part can "
                                 "be imported")
        if "lora_" in key or key.endswith(".new_gate"):
            raise MMAdapterError(f"{path}: {key} is the official V2 LoRA variant (LORA-BIAS-7B); our V2 has no LoRA "
                                 "part, so it cannot be imported")
    if PROMPT_KEY not in tensors:
        raise MMAdapterError(f"{path}: missing key {PROMPT_KEY!r}; not an official LLaMA-Adapter V2 file")
    n_layers = len(decoder_layers(model))
    fields = split_keys(path, tensors, V2_KEY, allowed={PROMPT_KEY, V2_FINAL_NORM})
    for index, entry in fields.items():
        if index >= n_layers:
            raise MMAdapterError(f"{path}: unexpected key {next(iter(entry.values()))[0]!r}: the base has only "
                                 f"{n_layers} layers")
    blocks = _prompt_blocks(model, path, tensors[PROMPT_KEY], adapter_len)
    gates = {index: entry["attention.gate"] for index, entry in fields.items() if "attention.gate" in entry}
    adapter = build_adapter(model, path, _layers(model, path, blocks, gates, adapter_len, V2_PREFIX), "tanh")
    names, text = {id(module): name for name, module in model.named_modules()}, model.config.get_text_config()
    found, targets = {}, set(V2_BIASES)
    for index, entry in fields.items():
        layer = decoder_layers(model)[index]
        for field, (key, tensor) in entry.items():
            if field.endswith(".bias"):
                linear = field.removesuffix(".bias")
                parent, child = LINEARS[linear]
                heads = text.num_attention_heads if linear == "attention.wq" else text.num_key_value_heads
                if linear in ROTARY and tensor.ndim == 1 and tensor.numel() % (2 * heads) == 0:  # else: refused below
                    tensor = meta_to_hf_rotary(tensor[:, None], heads)[:, 0]
                found[f"{names[id(getattr(getattr(layer, parent), child))]}.bias"] = ForeignTensor(key, tensor)
                targets.add(child)
            elif field != "attention.gate":
                norm = layer.input_layernorm if field == "attention_norm.weight" else layer.post_attention_layernorm
                found[f"{names[id(norm)]}.weight"] = ForeignTensor(key, tensor)
    if V2_FINAL_NORM in tensors:
        found[f"{names[id(final_norm(model))]}.weight"] = ForeignTensor(V2_FINAL_NORM, tensors[V2_FINAL_NORM])
    order = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    config = AdapterV2Config(targets=",".join(name for name in order if name in targets), train_norms=True)
    return build_v2(model, path, adapter, config, found)
