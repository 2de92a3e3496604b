"""PEFT ``adaption_prompt`` adapters: import, and export of ours where PEFT can express it.

Format (peft 0.21.2, ``peft/tuners/adaption_prompt``; checked by saving one with PEFT itself):

* a folder with ``adapter_config.json`` (``peft_type`` "ADAPTION_PROMPT", ``adapter_len``,
  ``adapter_layers``, ``target_modules`` "self_attn") and ``adapter_model.safetensors`` (or the
  pickled ``adapter_model.bin``);
* per adapted layer ``base_model.model.<path to layers.{i}.self_attn>.adaption_prompt``
  [1, adapter_len, hidden] and ``....adaption_gate`` [1];
* the top ``adapter_layers`` layers; the prompt's attention is softmaxed on its own and scaled by
  the raw scalar gate (no tanh), i.e. our ``gate_activation="identity"`` with
  ``gate_granularity="layer"`` (one gate for all heads), which is what an import gives;
* the prompt output goes through ``o_proj`` and is added after it (``layer.py``,
  ``AdaptedAttention.forward``): the same sum as ours where ``o_proj`` has no bias, but with a bias
  PEFT adds it a second time in every adapted layer, whatever the gate.

Export needs one effective gate per layer: ``gate_granularity="layer"`` adapters always have it,
per-head ones only while all heads agree. The raw gate PEFT gets is the effective one (``tanh(g)``
for "tanh" adapters, exact at inference). PEFT's adaption_prompt knows only llama and mistral, and
an ``o_proj`` with a non-zero bias is refused (PEFT would add it twice); importing such an adapter
says so in one logged line and gives the formula's numbers, not PEFT's.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from mm_adapter.errors import MMAdapterError
from mm_adapter.files.atomic import atomic_dir
from mm_adapter.files.text import POSITIVE_INT, check_fields, read_json
from mm_adapter.interop.common import ForeignLayer, build_adapter, expect_shape, layer_ranges, read_tensors, split_keys
from mm_adapter.model.adapter import adapter_config, adaption_prompts, decoder_layers
from mm_adapter.model.adapter_file import AdapterFile

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAMES = ("adapter_model.safetensors", "adapter_model.bin")
PEFT_TYPE = "ADAPTION_PROMPT"
SUPPORTED_MODEL_TYPES = ("llama", "mistral")  # PEFT's TRANSFORMERS_MODEL_CONFIG, less gpt2 (not ours)
KEY = re.compile(r"^base_model\.model\.(?:.+\.)?layers\.(\d+)\.self_attn\.(adaption_prompt|adaption_gate)$")
log = logging.getLogger(__name__)


def import_peft(model: nn.Module, folder: str | Path) -> AdapterFile:
    """Read a PEFT adaption_prompt folder as our adapter for ``model`` (checked, not yet applied)."""
    folder = Path(folder)
    config = _read_config(folder)
    weights = next((folder / name for name in WEIGHTS_NAMES if os.path.lexists(folder / name)), None)
    if weights is None:
        raise MMAdapterError(f"{folder}: no {' or '.join(WEIGHTS_NAMES)}")
    tensors = read_tensors(weights)
    layers = {}
    hidden = model.config.get_text_config().hidden_size
    for index, fields in sorted(split_keys(weights, tensors, KEY).items()):
        for name in ("adaption_prompt", "adaption_gate"):
            if name not in fields:
                raise MMAdapterError(f"{weights}: missing key for layer {index}: ...layers.{index}.self_attn.{name}")
        (prompt_key, prompt), (gate_key, gate) = fields["adaption_prompt"], fields["adaption_gate"]
        expect_shape(weights, prompt_key, prompt, (1, config["adapter_len"], hidden))
        expect_shape(weights, gate_key, gate, (1,))
        layers[index] = ForeignLayer(prompt[0], gate, prompt_key, gate_key)
    if len(layers) != config["adapter_layers"]:
        raise MMAdapterError(f"{weights}: holds {len(layers)} adapted layers, but {CONFIG_NAME} says "
                             f"adapter_layers={config['adapter_layers']}")
    adapter = build_adapter(model, weights, layers, "identity", gate_granularity="layer")
    note = second_bias(model, adapter.layers)
    if note:
        log.warning("%s: %s; imported as the LLaMA-Adapter formula (that bias once), so on this base its logits "
                    "differ from PEFT's by the second bias", weights, note)
    return adapter


def _read_config(folder: Path) -> dict:
    path = folder / CONFIG_NAME
    if not folder.is_dir() or not os.path.lexists(path):
        raise MMAdapterError(f"{folder}: no {CONFIG_NAME}; not a PEFT adapter folder")
    config = read_json(path, "PEFT adapter config", expect=dict)
    if config.get("peft_type") != PEFT_TYPE:
        raise MMAdapterError(f"{path}: peft_type is {config.get('peft_type')!r}, expected {PEFT_TYPE!r}")
    check_fields(config, path, "PEFT adapter config", {"adapter_len": POSITIVE_INT, "adapter_layers": POSITIVE_INT})
    if config.get("target_modules", "self_attn") != "self_attn":
        raise MMAdapterError(f"{path}: target_modules is {config['target_modules']!r}; only 'self_attn' "
                             "(Llama-style attention) is supported")
    return config


def second_bias(model: nn.Module, indices: Iterable[int]) -> str | None:
    """Where PEFT departs from the formula on this base, or ``None``: it adds the prompt output after ``o_proj``,
    so ``o_proj``'s bias a second time in every adapted layer (``indices``), even with zero gates."""
    layers = decoder_layers(model)
    biases = {index: getattr(layers[index].self_attn.o_proj, "bias", None) for index in indices}
    largest = {index: bias.detach().abs().max().item() for index, bias in biases.items() if bias is not None}
    largest = {index: value for index, value in largest.items() if value > 0}
    if not largest:
        return None
    return (f"o_proj has a bias in adapted layer(s) {layer_ranges(sorted(largest))} (largest |value| "
            f"{max(largest.values()):.3g}), and PEFT adds the prompt output after o_proj, so it adds that bias a "
            "second time in each adapted layer, even with zero gates")


def _layer_gate(index: int, adapter: nn.Module) -> torch.Tensor:
    """The one effective gate of an adapted layer, as PEFT's raw ``adaption_gate`` [1] (``tanh(g)`` for "tanh"
    adapters: the same outputs), or a one-line refusal where its heads differ."""
    gate = adapter.activated_gate().detach().to("cpu", torch.float32)
    spread = (gate.max() - gate.min()).item()
    if spread != 0:
        raise MMAdapterError(
            f"layer {index}: per-head gates differ (effective {adapter.gate_activation} gate from "
            f"{gate.min().item():.6g} to {gate.max().item():.6g}, spread {spread:.3g}); PEFT has one gate per "
            "layer, so this adapter cannot be exported without changing its outputs; train with "
            'gate_granularity="layer" (--gate-granularity layer) for an adapter PEFT can hold')
    return gate[:1].clone()


def peft_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Our attached adapter as PEFT's state dict, or a one-line refusal where PEFT cannot express it."""
    model_type = model.config.get_text_config().model_type
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise MMAdapterError(f"PEFT's adaption_prompt supports model types {', '.join(SUPPORTED_MODEL_TYPES)}, "
                             f"not {model_type!r}")
    adapters = adaption_prompts(model)
    note = second_bias(model, adapters)
    if note:
        raise MMAdapterError(f"{note}; PEFT would not compute this adapter, so it is not exported")
    names = {id(module): name for name, module in model.named_modules()}
    layers = decoder_layers(model)
    tensors = {}
    for index, adapter in adapters.items():
        prefix = f"base_model.model.{names[id(layers[index].self_attn)]}"
        tensors[f"{prefix}.adaption_prompt"] = adapter.prompt.detach().to("cpu", torch.float32)[None].contiguous()
        tensors[f"{prefix}.adaption_gate"] = _layer_gate(index, adapter)
    return tensors


def export_peft(model: nn.Module, folder: str | Path, overwrite: bool = False) -> Path:
    """Write the model's adapter as a PEFT folder that ``PeftModel.from_pretrained`` loads (atomically)."""
    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise MMAdapterError(f"{folder}: already exists (pass overwrite to replace it)")
    config = adapter_config(model)
    tensors = peft_tensors(model)
    peft_config = {
        "peft_type": PEFT_TYPE, "task_type": "CAUSAL_LM", "adapter_len": config.adapter_len,
        "adapter_layers": config.adapter_layers, "target_modules": "self_attn", "inference_mode": True,
        "base_model_name_or_path": getattr(model.config, "_name_or_path", None) or None,
        "revision": None, "auto_mapping": None,
    }
    try:
        with atomic_dir(folder, overwrite=overwrite) as staging:
            save_file(tensors, staging / WEIGHTS_NAMES[0], metadata={"format": "pt"})
            (staging / CONFIG_NAME).write_text(json.dumps(peft_config, indent=2, sort_keys=True) + "\n")
    except OSError as error:
        raise MMAdapterError(f"{folder}: cannot write PEFT adapter ({error.strerror or error})") from None
    return folder
