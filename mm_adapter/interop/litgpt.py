"""litgpt adapter checkpoints (``lit_model.pth.adapter``).

Format and math (Lightning-AI/litgpt ``litgpt/adapter.py``, ``litgpt/finetune/adapter.py``):

* saved by ``fabric.save(path, {"model": model}, filter=adapter_filter)``: a torch pickle holding
  ``{"model": {...}}`` with only ``transformer.h.{i}.attn.adapter_wte.weight`` [adapter_prompt_length,
  n_embd] and ``transformer.h.{i}.attn.gating_factor`` [1, 1, n_head, 1] (older releases
  [1, n_head, 1, 1], which litgpt itself still loads);
* layers ``i >= adapter_start_layer`` are adapted: the top ``n_layer - adapter_start_layer``;
* the prefix goes through the layer's own fused qkv projection, of which only the key and value
  parts are used, without rotary, repeated per query group; their attention is softmaxed on its
  own (an all-true mask) and added as ``gating_factor * ay``: the raw gate, one per head, which
  is our formula with ``gate_activation="identity"`` on the transformers layout of the same base.
"""

from __future__ import annotations

import re
from pathlib import Path

from torch import nn

from ..checkpoint import AdapterFile
from ..errors import MMAdapterError
from .common import ForeignLayer, build_adapter, expect_shape, read_tensors, split_keys

KEY = re.compile(r"^transformer\.h\.(\d+)\.attn\.(adapter_wte\.weight|gating_factor)$")


def import_litgpt(model: nn.Module, path: str | Path) -> AdapterFile:
    """Read a litgpt adapter checkpoint as our adapter for ``model`` (checked, not yet applied)."""
    path = Path(path)
    tensors = read_tensors(path, wrapper="model")
    heads = model.config.get_text_config().num_attention_heads
    layers = {}
    for index, fields in split_keys(path, tensors, KEY).items():
        for name in ("adapter_wte.weight", "gating_factor"):
            if name not in fields:
                raise MMAdapterError(f"{path}: missing key 'transformer.h.{index}.attn.{name}'")
        (prompt_key, prompt), (gate_key, gate) = fields["adapter_wte.weight"], fields["gating_factor"]
        expect_shape(path, gate_key, gate, (1, 1, heads, 1), (1, heads, 1, 1))
        layers[index] = ForeignLayer(prompt, gate, prompt_key, gate_key)
    return build_adapter(model, path, layers, "identity")

