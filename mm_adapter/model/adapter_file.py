"""Adapter files: safetensors holding only adapter tensors, plus JSON metadata.

The metadata carries the adapter config and the identity of the base it was trained on
(architecture, sizes, and a fingerprint of the frozen weights), so loading is one call and a file
made for another base is refused before any computation.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from mm_adapter.errors import MMAdapterError
from mm_adapter.files.atomic import atomic_path
from mm_adapter.files.safe_load import check_tensor, read_safetensors
from mm_adapter.files.text import POSITIVE_INT, STRING, check_fields, parse_json
from mm_adapter.model.adapter import (
    adapter_config, adapter_v2_config, adapter_v2_state, adaption_prompts, attach_adapter, decoder_layers,
    detach_adapter, has_adapter,
)
from mm_adapter.model.adapter_v2 import V2_PREFIX, v2_tensors
from mm_adapter.model.config import AdapterConfig, AdapterV2Config

FORMAT = "mm-adapter/1"
PROMPT_FORMAT_KEY = "prompt_format"  # optional metadata: the prompt format the adapter was trained on
V2_KEY = "adapter_v2"  # metadata of a LLaMA-Adapter V2 file: its AdapterV2Config; absent in a v1 file
_LAYER_KEY = re.compile(r"^layers\.(\d+)\.(prompt|gate)$")
_FINGERPRINT_SAMPLES = 4096
_BASE_FIELDS = {"architecture": STRING, "hidden_size": POSITIVE_INT, "num_layers": POSITIVE_INT,
                "num_heads": POSITIVE_INT, "num_kv_heads": POSITIVE_INT, "vocab_size": POSITIVE_INT}


@dataclass(frozen=True)
class BaseIdentity:
    """What an adapter assumes about its base model."""

    architecture: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    fingerprint: str | None = None

    @classmethod
    def of(cls, model: nn.Module) -> "BaseIdentity":
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        return cls(
            architecture=type(model).__name__,
            hidden_size=config.hidden_size,
            num_layers=config.num_hidden_layers,
            num_heads=config.num_attention_heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
            vocab_size=config.vocab_size,
            fingerprint=base_fingerprint(model),
        )

    @classmethod
    def from_dict(cls, data: dict, source: str | Path) -> "BaseIdentity":
        """The identity recorded in a file, every field type-checked (sizes are compared and used as numbers)."""
        check_fields(data, source, "metadata 'base'", _BASE_FIELDS, {"fingerprint": STRING},
                     allow_unknown=False)
        return cls(**data)

    def describe(self) -> str:
        fp = f" weights {self.fingerprint}" if self.fingerprint else ""
        return (f"{self.architecture} (hidden {self.hidden_size}, {self.num_layers} layers, "
                f"{self.num_heads}/{self.num_kv_heads} heads, vocab {self.vocab_size}){fp}")

    def mismatch(self, other: "BaseIdentity") -> bool:
        shape = {k: v for k, v in asdict(self).items() if k != "fingerprint"}
        other_shape = {k: v for k, v in asdict(other).items() if k != "fingerprint"}
        if shape != other_shape:
            return True
        return bool(self.fingerprint and other.fingerprint and self.fingerprint != other.fingerprint)


def base_fingerprint(model: nn.Module) -> str | None:
    """Hash of a strided sample of the frozen embedding and key projections.

    Values are rounded to bf16 first, so the same base loaded in fp32 or bf16 has one fingerprint.
    """
    tensors = [model.get_input_embeddings().weight]
    tensors += [layer.self_attn.k_proj.weight for layer in decoder_layers(model)]
    if any(t.device.type == "meta" for t in tensors):
        return None
    digest = hashlib.sha256()
    for tensor in tensors:
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // _FINGERPRINT_SAMPLES)
        sample = flat[::step][:_FINGERPRINT_SAMPLES].to("cpu", torch.bfloat16).to(torch.float32)
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass
class AdapterFile:
    """The contents of one adapter file, validated against its own config."""

    path: Path
    config: AdapterConfig
    base: BaseIdentity
    layers: dict[int, dict[str, torch.Tensor]]
    extra_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    extra_metadata: dict[str, str] = field(default_factory=dict)
    v2: AdapterV2Config | None = None  # a V2 file's bias/scale and norm settings; None: a v1 adapter
    v2_tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # its tensors, named as in the file

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def prompt_format(self) -> str | None:
        """The prompt format the adapter was trained on, when its file records one."""
        return self.extra_metadata.get(PROMPT_FORMAT_KEY)


def save_adapter(model: nn.Module, path: str | Path, extra_tensors: dict[str, torch.Tensor] | None = None,
                 extra_metadata: dict[str, str] | None = None) -> Path:
    """Write the model's adapter (and optional extra tensors, e.g. a visual projection) atomically."""
    path = Path(path)
    tensors = {}
    for index, module in adaption_prompts(model).items():
        tensors[f"layers.{index}.prompt"] = module.prompt.detach().to("cpu", torch.float32).contiguous()
        tensors[f"layers.{index}.gate"] = module.gate.detach().to("cpu", torch.float32).contiguous()
    if not tensors:
        raise MMAdapterError("this model has no adapter to save")
    for name, tensor in (extra_tensors or {}).items():
        tensors[name] = tensor.detach().to("cpu").contiguous()
    metadata = {
        "format": FORMAT,
        "config": adapter_config(model).to_json(),
        "base": json.dumps(asdict(BaseIdentity.of(model)), sort_keys=True),
        **(extra_metadata or {}),
    }
    v2 = adapter_v2_state(model)
    if v2 is not None:
        tensors |= {name: tensor.detach().to("cpu", torch.float32).contiguous()
                    for name, tensor in v2_tensors(v2).items()}
        metadata[V2_KEY] = v2.config.to_json()
    try:
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
    except OSError as error:
        raise MMAdapterError(f"{path}: cannot write adapter file ({error.strerror or error})") from None
    return path


def _read_json(metadata: dict[str, str], key: str, path: Path) -> dict:
    if key not in metadata:
        raise MMAdapterError(f"{path}: metadata has no {key!r}; not an mm-adapter file")
    return parse_json(metadata[key], path, f"metadata field {key!r}", expect=dict)


def _check_format(path: Path, metadata: dict[str, str]) -> None:
    """Before any tensor is read: a file of another kind (say a base's weights) is refused without loading it."""
    if metadata.get("format") != FORMAT:
        raise MMAdapterError(f"{path}: metadata format is {metadata.get('format')!r}, expected {FORMAT!r}")


def read_adapter(path: str | Path) -> AdapterFile:
    """Read and validate an adapter file without touching any model."""
    path = Path(path)
    if not os.path.lexists(path):
        raise MMAdapterError(f"{path}: no such adapter file")
    tensors, metadata = read_safetensors(path, check_metadata=lambda found: _check_format(path, found))
    config = AdapterConfig.from_dict(_read_json(metadata, "config", path), source=str(path))
    base = BaseIdentity.from_dict(_read_json(metadata, "base", path), path)
    v2 = AdapterV2Config.from_dict(_read_json(metadata, V2_KEY, path), source=str(path)) if V2_KEY in metadata \
        else None
    layers: dict[int, dict[str, torch.Tensor]] = {}
    extra, v2_found = {}, {}
    for key, tensor in tensors.items():
        match = _LAYER_KEY.match(key)
        if match:
            layers.setdefault(int(match.group(1)), {})[match.group(2)] = tensor
        elif v2 is not None and key.startswith(V2_PREFIX):
            check_tensor(path, key, tensor)
            v2_found[key] = tensor
        else:
            check_tensor(path, key, tensor, floating=False)  # NaN in a visual projection is as bad as in a prompt
            extra[key] = tensor
    _check_layers(path, config, base, layers)
    known = {"format", "config", "base", V2_KEY}
    return AdapterFile(path, config, base, layers, extra, {k: v for k, v in metadata.items() if k not in known},
                       v2, v2_found)


def _check_layers(path: Path, config: AdapterConfig, base: BaseIdentity, layers: dict) -> None:
    top = range(base.num_layers - config.adapter_layers, base.num_layers)  # a range: never built as a list
    if config.adapter_layers > base.num_layers or len(layers) != len(top) or any(i not in top for i in layers):
        raise MMAdapterError(f"{path}: adapted layers {sorted(layers)} do not match the config's top "
                             f"{config.adapter_layers} of {base.num_layers}")
    # one gate per head, or one per layer; files from before gate_granularity existed hold per-head gates
    shapes = {"prompt": (config.adapter_len, base.hidden_size), "gate": (config.gates_per_layer(base.num_heads),)}
    for index, entry in sorted(layers.items()):
        for name, shape in shapes.items():
            key = f"layers.{index}.{name}"
            if name not in entry:
                raise MMAdapterError(f"{path}: missing tensor {key}")
            if tuple(entry[name].shape) != shape:
                raise MMAdapterError(f"{path}: {key} has shape {list(entry[name].shape)}, expected {list(shape)}")
            check_tensor(path, key, entry[name])


def apply_adapter(model: nn.Module, adapter: AdapterFile) -> nn.Module:
    """Put a read adapter on ``model``: refuse another base, (re)attach if the config differs, copy tensors."""
    identity = BaseIdentity.of(model)
    if adapter.base.mismatch(identity):
        raise MMAdapterError(f"{adapter.path}: made for {adapter.base.describe()}, but this base is "
                             f"{identity.describe()}")
    if has_adapter(model) and (adapter_config(model) != adapter.config or adapter_v2_config(model) != adapter.v2):
        detach_adapter(model)
    if not has_adapter(model):
        attach_adapter(model, adapter.config, adapter.v2)
    live = _v2_targets(model, adapter)
    with torch.no_grad():
        for index, module in adaption_prompts(model).items():
            module.prompt.copy_(adapter.layers[index]["prompt"])
            module.gate.copy_(adapter.layers[index]["gate"])
        for name, tensor in live.items():
            tensor.copy_(adapter.v2_tensors[name])
    return model


def _v2_targets(model: nn.Module, adapter: AdapterFile) -> dict[str, torch.Tensor]:
    """The live V2 tensors the file's are copied into, once the file is checked to hold exactly these, each of its
    shape (the base's layer sizes are known only here, on the model): anything else is one line naming the tensor."""
    state = adapter_v2_state(model)
    live = v2_tensors(state) if state is not None else {}
    for name, tensor in live.items():
        found = adapter.v2_tensors.get(name)
        if found is None:
            raise MMAdapterError(f"{adapter.path}: missing tensor {name} (an adapter V2 file holds every bias, scale "
                                 "and norm weight its config names)")
        if found.shape != tensor.shape:
            raise MMAdapterError(f"{adapter.path}: {name} has shape {list(found.shape)}, expected "
                                 f"{list(tensor.shape)}")
    unknown = sorted(set(adapter.v2_tensors) - set(live))
    if unknown:
        raise MMAdapterError(f"{adapter.path}: tensor {unknown[0]} is no part of this base's adapter V2 "
                             f"({len(unknown)} such)")
    return live


def load_adapter(model: nn.Module, path: str | Path) -> AdapterFile:
    """Read ``path`` and apply it to ``model`` (one call); returns the file's contents for callers."""
    adapter = read_adapter(path)
    apply_adapter(model, adapter)
    return adapter
