"""The one path every foreign format takes into ours: named tensors -> checked layers -> AdapterFile.

A format module only knows its key names and shapes; it hands over, per absolute layer index, one
prompt (adapter_len x hidden) and one gate (a scalar, or one value per head), each with the key it
came from so every refusal can name it, and says whether the format gates per head (a scalar is
then broadcast to every head) or per layer (PEFT: kept as our ``gate_granularity="layer"``).
Everything about the base (width, layer count, which layers an adapter may occupy) is checked
here, once.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mm_adapter.errors import MMAdapterError
from mm_adapter.files.safe_load import check_tensor, load_torch_file, read_safetensors
from mm_adapter.model.adapter import decoder_layers
from mm_adapter.model.adapter_file import AdapterFile, BaseIdentity
from mm_adapter.model.adapter_v2 import V2_PREFIX, norm_modules, target_linears
from mm_adapter.model.config import AdapterConfig, AdapterV2Config


@dataclass
class ForeignLayer:
    """One adapted layer as read from a foreign file, before any check against the base."""

    prompt: torch.Tensor  # (adapter_len, hidden)
    gate: torch.Tensor  # one value (broadcast to every head) or one per head
    prompt_key: str
    gate_key: str


def read_tensors(path: str | Path, wrapper: str | None = None,
                 beside: frozenset[str] = frozenset()) -> dict[str, torch.Tensor]:
    """Named tensors of a safetensors file or a torch pickle (tensors only, never code).

    ``wrapper``: a pickle holding only ``{wrapper: state_dict}`` (how Lightning Fabric saves) is unwrapped, also
    where it holds entries named in ``beside`` too (dropped).
    """
    path = Path(path)
    if not os.path.lexists(path):
        raise MMAdapterError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        return read_safetensors(path)[0]
    return load_torch_file(path, wrapper, beside)


def split_keys(path: Path, tensors: dict[str, torch.Tensor], pattern: re.Pattern,
               allowed: set[str] = frozenset()) -> dict[int, dict[str, tuple[str, torch.Tensor]]]:
    """Group keys matching ``pattern`` (groups: layer index, field) by layer; refuse any other key."""
    layers: dict[int, dict[str, tuple[str, torch.Tensor]]] = {}
    for key in sorted(tensors):
        match = pattern.match(key)
        if match:
            layers.setdefault(int(match.group(1)), {})[match.group(2)] = (key, tensors[key])
        elif key not in allowed:
            raise MMAdapterError(f"{path}: unexpected key {key!r}: not part of this adapter format")
    return layers


def expect_shape(path: Path, key: str, tensor: torch.Tensor, *shapes: tuple[int, ...]) -> None:
    if tuple(tensor.shape) not in shapes:
        wanted = " or ".join(str(list(shape)) for shape in shapes)
        raise MMAdapterError(f"{path}: {key} has shape {list(tensor.shape)}, expected {wanted}")


def build_adapter(model: nn.Module, path: Path, layers: dict[int, ForeignLayer],
                  gate_activation: str = "identity", gate_granularity: str = "head") -> AdapterFile:
    """Check foreign layers against ``model`` and return them as our :class:`AdapterFile` for it.

    Our adapter occupies the top ``adapter_layers`` layers, so the foreign layers must be exactly
    those; each must agree with the base's width and head count and with the others' length.
    """
    identity = BaseIdentity.of(model)
    n_layers, hidden, heads = len(decoder_layers(model)), identity.hidden_size, identity.num_heads
    if not layers:
        raise MMAdapterError(f"{path}: no adapter layers found")
    for index, layer in sorted(layers.items()):
        if index >= n_layers:
            raise MMAdapterError(f"{path}: {layer.prompt_key} is for layer {index}, but the base has only "
                                 f"{n_layers} layers")
    indices = sorted(layers)
    top = list(range(n_layers - len(indices), n_layers))
    if indices != top:
        missing = sorted(set(range(indices[0], n_layers)) - set(indices))
        raise MMAdapterError(f"{path}: adapted layers must be the top ones of the base's {n_layers}; found "
                             f"{layer_ranges(indices)}, missing layer(s) {layer_ranges(missing)}")
    adapter_len = layers[indices[0]].prompt.shape[0]
    config = AdapterConfig(adapter_len=adapter_len, adapter_layers=len(indices), gate_activation=gate_activation,
                           gate_granularity=gate_granularity)
    gates = config.gates_per_layer(heads)
    out: dict[int, dict[str, torch.Tensor]] = {}
    for index in indices:
        layer = layers[index]
        prompt = layer.prompt
        if prompt.ndim != 2 or prompt.shape[1] != hidden:
            raise MMAdapterError(f"{path}: {layer.prompt_key} has shape {list(prompt.shape)}, but the base's "
                                 f"hidden size is {hidden} (expected [adapter_len, {hidden}])")
        if prompt.shape[0] != adapter_len:
            raise MMAdapterError(f"{path}: {layer.prompt_key} has {prompt.shape[0]} prompts, but layer "
                                 f"{indices[0]} has {adapter_len}")
        gate = layer.gate.reshape(-1)
        if gate.numel() not in (1, gates):
            wanted = "1 or one per head" if gate_granularity == "head" else "1: one gate per layer"
            raise MMAdapterError(f"{path}: {layer.gate_key} has {gate.numel()} values, but the base has {heads} "
                                 f"heads (expected {wanted})")
        check_tensor(path, layer.prompt_key, prompt)
        check_tensor(path, layer.gate_key, gate)
        out[index] = {"prompt": prompt.detach().to("cpu", torch.float32).contiguous(),
                      "gate": gate.detach().to("cpu", torch.float32).expand(gates).contiguous()}
    return AdapterFile(path=path, config=config, base=identity, layers=out)


@dataclass
class ForeignTensor:
    """One V2 tensor as read from a foreign file, already in our layout (a fused qkv split, rows reordered)."""

    key: str  # the foreign key (or keys) it came from, for refusals
    tensor: torch.Tensor


def build_v2(model: nn.Module, path: Path, adapter: AdapterFile, config: AdapterV2Config,
             found: dict[str, ForeignTensor]) -> AdapterFile:
    """Give ``adapter`` the V2 part ``config`` makes on ``model``, from ``found`` (our module name + ``.bias``,
    ``.scale`` or ``.weight`` -> tensor); every tensor a format does not store stays at its starting value (bias 0,
    scale 1, the base's norm weight), which is what that format computes with there."""
    names = {f"{name}.{field}": module.out_features for name, module in
             target_linears(model, decoder_layers(model), config).items() for field in ("bias", "scale")}
    tensors = {name: torch.zeros(size) if name.endswith(".bias") else torch.ones(size) for name, size in names.items()}
    if config.train_norms:
        tensors |= {f"{name}.weight": module.weight.detach().to("cpu", torch.float32).clone()
                    for name, module in norm_modules(model).items()}
    for name, item in found.items():
        if name not in tensors:
            raise MMAdapterError(f"{path}: {item.key} has no counterpart {name!r} on this base")
        if tuple(item.tensor.shape) != tuple(tensors[name].shape):
            raise MMAdapterError(f"{path}: {item.key} has shape {list(item.tensor.shape)}, but this base's {name} "
                                 f"has {list(tensors[name].shape)}")
        check_tensor(path, item.key, item.tensor)
        tensors[name] = item.tensor.detach().to("cpu", torch.float32).contiguous()
    adapter.v2 = config
    adapter.v2_tensors = {V2_PREFIX + name: tensor for name, tensor in tensors.items()}
    return adapter


def final_norm(model: nn.Module) -> nn.Module:
    """The norm after the last decoder layer (litgpt's ``ln_f``, Meta's ``norm``)."""
    return (model.get_decoder() if hasattr(model, "get_decoder") else model.model).norm


def layer_ranges(indices: list[int]) -> str:
    """[2, 3, 4, 7] -> '2-4, 7' (30 layer numbers stay readable on one line)."""
    parts, start = [], None
    for i, index in enumerate(indices):
        if start is None:
            start = index
        if i + 1 == len(indices) or indices[i + 1] != index + 1:
            parts.append(str(start) if start == index else f"{start}-{index}")
            start = None
    return ", ".join(parts) or "none"
