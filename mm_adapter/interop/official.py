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
"""

from __future__ import annotations

import re
from pathlib import Path

from torch import nn

from mm_adapter.errors import MMAdapterError
from mm_adapter.interop.common import ForeignLayer, build_adapter, expect_shape, read_tensors, split_keys
from mm_adapter.model.adapter import decoder_layers
from mm_adapter.model.adapter_file import AdapterFile

PROMPT_KEY = "adapter_query.weight"
CAPTION_KEY = "cap_adapter_query.weight"
GATE_KEY = re.compile(r"^layers\.(\d+)\.attention\.(gate)$")
DEFAULT_ADAPTER_LEN = 10


def import_official(model: nn.Module, path: str | Path, adapter_len: int = DEFAULT_ADAPTER_LEN,
                    gate_activation: str = "identity") -> AdapterFile:
    """Read an official v1 adapter file as our adapter for ``model`` (checked, not yet applied).

    ``gate_activation="identity"`` reproduces the official inference code; "tanh" its training code.
    """
    path = Path(path)
    tensors = read_tensors(path)
    if CAPTION_KEY in tensors:
        raise MMAdapterError(f"{path}: {CAPTION_KEY} is the official caption adapter, whose prompts need its CLIP "
                             f"vision model; only the instruction adapter ({PROMPT_KEY}) can be imported")
    if PROMPT_KEY not in tensors:
        raise MMAdapterError(f"{path}: missing key {PROMPT_KEY!r}; not an official LLaMA-Adapter v1 file")
    queries = tensors[PROMPT_KEY]
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
    gates = split_keys(path, tensors, GATE_KEY, allowed={PROMPT_KEY})
    heads = model.config.get_text_config().num_attention_heads
    blocks = queries.reshape(n_adapted, adapter_len, queries.shape[1])
    layers = {}
    for block, index in enumerate(range(n_layers - n_adapted, n_layers)):
        if index not in gates:
            raise MMAdapterError(f"{path}: missing key 'layers.{index}.attention.gate' (adapted layer {index})")
        key, gate = gates[index]["gate"]
        expect_shape(path, key, gate, (1, heads, 1, 1), (), (1,))
        rows_name = f"{PROMPT_KEY} rows {block * adapter_len}-{(block + 1) * adapter_len - 1}"
        layers[index] = ForeignLayer(blocks[block], gate, rows_name, key)
    for index, fields in gates.items():
        if index >= n_layers:
            raise MMAdapterError(f"{path}: unexpected key {fields['gate'][0]!r}: the base has only {n_layers} layers")
    return build_adapter(model, path, layers, gate_activation)
