"""What a training run costs before any weight is downloaded: parameter counts and per-GPU memory.

The model is built on the meta device (shapes only, no memory) from its real architecture config, and the adapter
(and the visual projection, for a run with images) is attached exactly as training attaches it, so the counts are
the ones the run itself will print. Architectures come from, in this order: a local folder's ``config.json``, a
Meta folder's ``params.json`` (matched to the table), the hub cache's ``config.json`` of a hub id (offline, never a
download), or the table of LLaMA-1 shapes by name (``huggyllama/llama-7b``, ``/data/llama/65B``, ...). Anything
else is refused in one line: planning needs no weights, only the shape.

Memory per GPU is an estimate. Weights, the adapter, its gradients and AdamW's state are exact byte counts; under
fsdp the frozen weights are split over the GPUs and the adapter stays whole on each (``mm_adapter/training/fsdp.py``).
Activations follow a formula for LLaMA decoder blocks: bytes kept for the backward, per token and per layer the
backward crosses (the adapted layers: the backward stops at the lowest one), under bf16 autocast:

    18 H + 6 I + 12 x heads x adapter_len

16 H + 6 I is the frozen block (the fp32 inputs of both RMSNorms 8 H, SDPA's q, k, v and output 8 H, the MLP's gate,
SiLU(gate) and up 6 I; frozen linear layers keep no inputs); 2 H + 12 x heads x adapter_len is the prompt attention.
It matches what autograd saves on a LLaMA block to within 1% (measured with saved-tensor hooks; tests/test_plan.py
checks it). fp32 weights without autocast double the block's share. With activation checkpointing each layer keeps
only its input (2 H, or 4 H on an fp32 residual stream) plus one layer's full set while it is recomputed. Not
counted: allocator fragmentation, beyond a fixed reserve for the CUDA context and workspaces.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mm_adapter.encoders.config import VisualConfig
from mm_adapter.errors import MMAdapterError
from mm_adapter.files.text import read_json
from mm_adapter.model.adapter import attach_adapter, count_trainable, decoder_layers
from mm_adapter.model.config import AdapterConfig
from mm_adapter.model.family import text_config
from mm_adapter.model.meta_format import is_meta_folder, read_params

GIB = 2**30
RESERVE_BYTES = 2 * GIB  # CUDA context, cuBLAS/NCCL workspaces: assumed, not computed
LOGIT_BYTES = 10  # per logit around the loss: bf16 logits 2, fp32 log-softmax 4, its gradient 4
ADAM_STATE_BYTES = 8  # two fp32 moments per trainable parameter
TRAINABLE_BYTES = 8  # fp32 parameter and its fp32 gradient
WEIGHT_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, None: 2}  # None: as stored; LLaMA checkpoints are 16-bit
MAX_GPUS = 4096

_LLAMA1_COMMON = dict(vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-6, tie_word_embeddings=False)
# LLaMA-1 (Touvron et al. 2023, table 2): hidden, layers, heads, MLP width
_LLAMA1_SHAPES = {
    "llama-7b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, intermediate_size=11008),
    "llama-13b": dict(hidden_size=5120, num_hidden_layers=40, num_attention_heads=40, intermediate_size=13824),
    "llama-33b": dict(hidden_size=6656, num_hidden_layers=60, num_attention_heads=52, intermediate_size=17920),
    "llama-65b": dict(hidden_size=8192, num_hidden_layers=80, num_attention_heads=64, intermediate_size=22016),
}
ARCHITECTURES: dict[str, dict] = {name: {**_LLAMA1_COMMON, **shape} for name, shape in _LLAMA1_SHAPES.items()}
# The project's default base, so its own recipes plan too (its config.json, as converted from the GGUF).
ARCHITECTURES["smollm2-135m"] = dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                                     num_key_value_heads=3, intermediate_size=1536, vocab_size=49152,
                                     max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=True)
# A base spec's last path component naming a LLaMA-1 size: llama-7b, llama_65b-hf, 7B (Meta's folders), llama-30b.
_LLAMA1_NAME = re.compile(r"^(?:llama[-_]?(?:1[-_])?)?(7|13|30|33|65)b(?:[-_]hf)?$", re.IGNORECASE)


@dataclass(frozen=True)
class Architecture:
    """A base model's architecture config and where it came from (said in the report)."""

    config: object  # a transformers PretrainedConfig
    source: str


def table_name(base: str) -> str | None:
    """The :data:`ARCHITECTURES` row a base spec names by itself, or None."""
    if base in ARCHITECTURES:
        return base
    match = _LLAMA1_NAME.match(Path(base.rstrip("/")).name)
    if match is None:
        return None
    size = {"30": "33"}.get(match.group(1), match.group(1))  # Meta's "30B" is the paper's 33B
    return f"llama-{size}b"


def _config_from_dict(data: dict, where: str):
    from transformers import AutoConfig

    model_type = data.get("model_type")
    try:
        return AutoConfig.for_model(model_type, **{k: v for k, v in data.items() if k != "model_type"})
    except (ValueError, KeyError, TypeError) as error:
        raise MMAdapterError(f"{where}: not a transformers model config with a known model_type "
                             f"({model_type!r}: {str(error).strip().splitlines()[0][:120]})") from None


def _table_config(name: str):
    from transformers import LlamaConfig

    return LlamaConfig(**ARCHITECTURES[name])


def _meta_folder_config(folder: Path) -> Architecture:
    """A Meta folder's params.json matched to the table by width and depth (its vocabulary is in tokenizer.model)."""
    params = read_params(folder)
    for name, shape in ARCHITECTURES.items():
        if (shape["hidden_size"], shape["num_hidden_layers"]) == (params["dim"], params["n_layers"]):
            return Architecture(_table_config(name), f"{folder}/params.json (dim {params['dim']}, "
                                                     f"{params['n_layers']} layers: {name} of the built-in table)")
    raise MMAdapterError(f"{folder}/params.json: dim {params['dim']} with {params['n_layers']} layers is not in the "
                         f"architecture table ({', '.join(ARCHITECTURES)}); convert it to a transformers folder")


def _cached_hub_config(base: str) -> Path | None:
    """The hub cache's config.json of a hub id, if this machine has it (never a network call)."""
    if base.count("/") != 1 or base.startswith((".", "/")):
        return None
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(base, "config.json")
    except ValueError:  # not a valid repo id
        return None
    return Path(found) if isinstance(found, str) else None


def architecture(base: str) -> Architecture:
    """The architecture config of the base a recipe names, without reading (or downloading) any weight."""
    folder = Path(base).expanduser()
    if (folder / "config.json").is_file():
        path = folder / "config.json"
        return Architecture(_config_from_dict(read_json(path, "model config", expect=dict), str(path)), str(path))
    if is_meta_folder(folder):
        return _meta_folder_config(folder)
    cached = _cached_hub_config(base)
    if cached is not None:
        return Architecture(_config_from_dict(read_json(cached, "model config", expect=dict), str(cached)),
                            f"{base} (config.json from the hub cache)")
    name = table_name(base)
    if name is not None:
        return Architecture(_table_config(name), f"{name} from the built-in architecture table")
    raise MMAdapterError(f"base {base!r}: no config.json or params.json there and not an architecture of the table "
                         f"({', '.join(ARCHITECTURES)}); planning reads only the shape: give a folder with config.json")


def meta_model(config) -> nn.Module:
    """The causal LM of ``config`` on the meta device: every parameter's shape, no memory."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    model.requires_grad_(False)
    return model


@dataclass(frozen=True)
class ParameterCounts:
    adapter: int
    visual: int
    frozen: int
    largest_layer: int  # parameters of one decoder layer (what FSDP gathers at a time)
    encoder: int = 0  # the frozen CLIP image tower of a run with images (fp32, kept on the device)

    @property
    def trainable(self) -> int:
        return self.adapter + self.visual


def vit_parameters(vision: dict) -> int:
    """Parameters of an open_clip ViT image tower from its ``vision_cfg`` (no weights built): per block two
    LayerNorms, qkv and output projections and the MLP (12 w^2 + 13 w at mlp_ratio 4), plus patch embedding, class
    token, positions, the pre/post LayerNorms and the output projection. Exact for the ViT-* configs."""
    width, blocks, patch = vision["width"], vision["layers"], vision["patch_size"]
    mlp = int(width * vision.get("mlp_ratio", 4.0))
    block = 4 * width + (4 * width * width + 4 * width) + (2 * width * mlp + mlp + width)
    grid = (vision["image_size"] // patch) ** 2
    stem = 3 * patch * patch * width + width + (grid + 1) * width + 4 * width
    return blocks * block + stem + width * vision["embed_dim"]


def _visual_counts(visual: VisualConfig, hidden: int) -> tuple[int, int]:
    """(trainable projection, frozen encoder) parameters of the visual path, laid out on the meta device."""
    from mm_adapter.encoders.clip import clip_model_config
    from mm_adapter.encoders.projection import VisualProjection

    projection = VisualProjection.from_config(visual, hidden, device="meta")
    config = clip_model_config(visual.clip_model)
    encoder = vit_parameters({**config["vision_cfg"], "embed_dim": config["embed_dim"]})
    return sum(p.numel() for p in projection.parameters()), encoder


def count_parameters(config, adapter: AdapterConfig, visual: VisualConfig | None = None) -> ParameterCounts:
    """Trainable and frozen counts of ``config``'s model with ``adapter`` attached (and ``visual``'s projection)."""
    model = meta_model(config)
    attach_adapter(model, adapter)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    layer = max(sum(p.numel() for p in layer.parameters() if not p.requires_grad) for layer in decoder_layers(model))
    projection, encoder = _visual_counts(visual, text_config(config).hidden_size) if visual else (0, 0)
    return ParameterCounts(adapter=count_trainable(model), visual=projection, frozen=frozen, largest_layer=layer,
                           encoder=encoder)


@dataclass(frozen=True)
class RunShape:
    """What of a training run sets its memory: batch and length per GPU, precision, sharding, checkpointing."""

    batch: int
    seq_len: int
    weight_dtype: str | None  # fp32, bf16, fp16, or None (as stored: 16-bit)
    autocast: bool
    sharded: bool  # FSDP: the frozen weights split over the GPUs (the adapter and its optimizer state stay whole)
    checkpointing: bool

    @property
    def weight_bytes(self) -> int:
        return WEIGHT_BYTES[self.weight_dtype]

    @property
    def activation_scale(self) -> int:
        """2 for fp32 weights without autocast (every activation fp32), else 1 (bf16 activations)."""
        return 2 if self.weight_bytes == 4 and not self.autocast else 1

    @property
    def residual_bytes(self) -> int:
        return 4 if self.weight_bytes == 4 else 2


@dataclass(frozen=True)
class MemoryItem:
    name: str
    bytes: float
    note: str


def activation_bytes_per_token(config, adapter: AdapterConfig, scale: int = 1) -> int:
    """Bytes autograd keeps per token in one adapted LLaMA layer (module docstring: 18 H + 6 I + 12 heads len)."""
    text = text_config(config)
    return (scale * (18 * text.hidden_size + 6 * text.intermediate_size)
            + 12 * text.num_attention_heads * adapter.adapter_len)


def _activations(config, adapter: AdapterConfig, run: RunShape) -> MemoryItem:
    tokens = run.batch * run.seq_len
    layer = tokens * activation_bytes_per_token(config, adapter, run.activation_scale)
    hidden = text_config(config).hidden_size
    shape = f"batch {run.batch} x len {run.seq_len}"
    if run.checkpointing:
        kept = adapter.adapter_layers * tokens * run.residual_bytes * hidden
        return MemoryItem("activations", kept + layer, f"checkpointed: {adapter.adapter_layers} layer inputs "
                          f"({shape} x {run.residual_bytes} x H) + one layer recomputed")
    return MemoryItem("activations", adapter.adapter_layers * layer,
                      f"{adapter.adapter_layers} layers x {shape} x {layer // tokens:,} B/token (estimate)")


def memory_per_gpu(config, adapter: AdapterConfig, counts: ParameterCounts, run: RunShape,
                   gpus: int) -> list[MemoryItem]:
    """Each term of one GPU's peak during training on ``gpus`` GPUs (see the module docstring)."""
    share = gpus if run.sharded else 1
    placement = f"sharded over {gpus}" if run.sharded else "replicated"
    dtype = run.weight_dtype or "as stored (bf16 assumed)"
    text = text_config(config)
    items = [
        MemoryItem("weights", counts.frozen * run.weight_bytes / share, f"{dtype}, {counts.frozen:,} frozen, {placement}"),
        MemoryItem("adapter + grads", counts.trainable * TRAINABLE_BYTES,
                   "fp32 parameters and gradients, whole on every GPU (fsdp too)"),
        MemoryItem("optimizer state", counts.trainable * ADAM_STATE_BYTES,
                   "AdamW: 2 fp32 moments; no master copy (trainable parameters are fp32)"),
        _activations(config, adapter, run),
        MemoryItem("logits", run.batch * run.seq_len * text.vocab_size * LOGIT_BYTES,
                   f"LM head at labelled positions, at most batch x len x vocab {text.vocab_size:,} x {LOGIT_BYTES} B"),
    ]
    if counts.encoder:
        items.append(MemoryItem("CLIP encoder", counts.encoder * 4, f"frozen image tower, fp32, {counts.encoder:,}"))
    if run.weight_bytes == 4 and run.autocast:
        layers = 1 if run.checkpointing else adapter.adapter_layers
        items.append(MemoryItem("bf16 weight casts", layers * counts.largest_layer * 2,
                                "autocast's bf16 copies of fp32 weights kept for the backward"))
    if run.sharded:
        items.append(MemoryItem("FSDP gather", 2 * counts.largest_layer * run.weight_bytes,
                                "two unsharded decoder layers (the current one and the prefetched next)"))
    items.append(MemoryItem("reserve", RESERVE_BYTES, "CUDA context and workspaces (assumed)"))
    return items


def total(items: list[MemoryItem]) -> float:
    return sum(item.bytes for item in items)


def gpus_needed(per_gpu: Callable[[int], float], gpu_bytes: float, sharded: bool) -> int | None:
    """The fewest GPUs of ``gpu_bytes`` each that hold the run (replicated: 1 or none), or None."""
    if not sharded:
        return 1 if per_gpu(1) <= gpu_bytes else None
    return next((n for n in range(1, MAX_GPUS + 1) if per_gpu(n) <= gpu_bytes), None)


def steps_per_epoch(records: int, batch: int, accum: int, gpus: int) -> int:
    return max(1, math.ceil(records / (batch * accum * gpus)))
