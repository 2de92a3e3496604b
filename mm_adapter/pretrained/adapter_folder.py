"""An adapter folder as PEFT users expect one: what it holds, read and checked against its weights, and written.

A folder holds ``adapter_model.safetensors`` (exactly our single-file format, so ``read_adapter`` reads it),
``adapter_config.json`` (readable without torch: what the adapter is and which base it was made for: the
spec given to ``load_base``, transformers' name or path, the hub revision, the base identity, plus the
adapter config, prompt format, visual config and parameter counts) and a short model card ``README.md``.
The safetensors file stays the source of truth; the JSON must agree with it.

Which file or folder a user means by an adapter's name is ``locate.py``; a model's adapter into a folder and
back (``save_pretrained`` / ``from_pretrained`` / ``push_to_hub``) is ``load_save.py``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from torch import nn

from mm_adapter.errors import MMAdapterError
from mm_adapter.files.atomic import atomic_dir, atomic_write_json, atomic_write_text
from mm_adapter.files.safe_load import open_safetensors
from mm_adapter.files.text import STRING, Rule, check_fields, parse_json, read_json
from mm_adapter.model.adapter_file import V2_KEY, AdapterFile, BaseIdentity, read_adapter
from mm_adapter.model.base import CONFIG_NAME as MODEL_CONFIG_NAME
from mm_adapter.model.base import base_source
from mm_adapter.pretrained.hub import is_hub_id

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
CARD_NAME = "README.md"
FOLDER_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME)
FOLDER_FORMAT = "mm-adapter-folder/1"
METHOD = "llama-adapter"
LIBRARY = "mm-adapter"
BASE_SOURCE_KEY = "base_source"  # adapter file metadata: JSON {spec, name_or_path, revision} of the base
VISUAL_KEY = "visual"  # adapter file metadata of a visual adapter (encoders.projection.visual_extras)
_VISUAL_BUFFERS = ("feature_mean", "feature_std")  # stored with the projection, not trained
_OBJECT = Rule(lambda value: isinstance(value, dict), "a JSON object")
_REQUIRED = {"format": STRING, "method": STRING, "adapter_config": _OBJECT, "base_identity": _OBJECT}
_OPTIONAL = {"library_name": STRING, "base_model_name_or_path": STRING, "base_model_spec": STRING,
             "revision": STRING, "prompt_format": STRING, "visual": _OBJECT, "trainable_parameters": _OBJECT,
             "adapter_v2": _OBJECT}
_EXPECTED = {"format": FOLDER_FORMAT, "method": METHOD}
# adapter_config.json field -> the adapter file's metadata key holding the same JSON
_AGREES_WITH = {"adapter_config": "config", "base_identity": "base", "adapter_v2": V2_KEY}


# ----- the folder's adapter_config.json --------------------------------------------------------------------------

def folder_weights(folder: Path, label: str | None = None) -> Path:
    """The weights of an adapter folder, after its ``adapter_config.json`` is checked and found to agree with them."""
    config = read_folder_config(folder)
    weights = folder / WEIGHTS_NAME
    if not os.path.lexists(weights):
        raise MMAdapterError(f"{label or folder}: adapter folder has {CONFIG_NAME} but no {WEIGHTS_NAME}")
    _check_agrees(folder / CONFIG_NAME, config, weights)
    return weights


def read_folder_config(folder: Path) -> dict:
    """``adapter_config.json``, type-checked field by field; anything wrong is one line naming the file and key."""
    path = folder / CONFIG_NAME
    if not os.path.lexists(path):
        found = "a transformers model" if os.path.lexists(folder / MODEL_CONFIG_NAME) else "no adapter"
        raise MMAdapterError(f"{folder}: folder holds {found}, not an mm-adapter adapter folder (no {CONFIG_NAME})")
    data = read_json(path, "adapter config", expect=dict)
    if "peft_type" in data and "format" not in data:
        raise MMAdapterError(f"{path}: a PEFT adapter, not an mm-adapter folder; import it with "
                             "mm-adapter convert --from peft")
    check_fields(data, path, "adapter config", _REQUIRED, _OPTIONAL)
    for key, expected in _EXPECTED.items():
        if data[key] != expected:
            raise MMAdapterError(f"{path}: field {key!r} is {data[key][:60]!r}, expected {expected!r}")
    return data


def _check_agrees(path: Path, config: dict, weights: Path) -> None:
    """The JSON describes the weights file: a hand-edited or half-replaced folder is refused, not half-believed.
    Only the header is read; a metadata key the file lacks is left for ``read_adapter`` to name."""
    with open_safetensors(weights) as handle:
        metadata = handle.metadata() or {}
    for field, key in _AGREES_WITH.items():
        if key in metadata and parse_json(metadata[key], weights, f"metadata field {key!r}") != config[field]:
            raise MMAdapterError(f"{path}: field {field!r} does not match the metadata of {weights.name}")


def folder_config(adapter: AdapterFile) -> dict:
    """``adapter_config.json`` for an adapter file: everything it says, readable without torch."""
    source = recorded_source(adapter)
    visual = adapter.extra_metadata.get(VISUAL_KEY)
    return {"format": FOLDER_FORMAT, "method": METHOD, "library_name": LIBRARY,
            "base_model_name_or_path": source.get("name_or_path"), "base_model_spec": source.get("spec"),
            "revision": source.get("revision"), "base_identity": asdict(adapter.base),
            "adapter_config": adapter.config.to_dict(), "prompt_format": adapter.prompt_format,
            "adapter_v2": adapter.v2.to_dict() if adapter.v2 else None,
            "visual": parse_json(visual, adapter.path, "metadata field 'visual'") if visual else None,
            "trainable_parameters": parameter_counts(adapter)}


def recorded_source(adapter: AdapterFile) -> dict[str, str]:
    """The base an adapter file says it was made for (spec, name_or_path, revision), as far as it records it."""
    text = adapter.extra_metadata.get(BASE_SOURCE_KEY)
    if text is None:
        return {}
    data = parse_json(text, adapter.path, f"metadata field {BASE_SOURCE_KEY!r}", expect=dict)
    check_fields(data, adapter.path, f"metadata {BASE_SOURCE_KEY!r}", {},
                 {"spec": STRING, "name_or_path": STRING, "revision": STRING})
    return data


def base_metadata(model: nn.Module) -> dict[str, str]:
    """Adapter file metadata naming the base ``model`` came from (``save_adapter(..., extra_metadata=...)``)."""
    source = base_source(model)
    return {BASE_SOURCE_KEY: json.dumps(source, sort_keys=True)} if source else {}


def parameter_counts(adapter: AdapterFile) -> dict[str, int]:
    """Trainable parameters: prompts and gates (and a V2 file's biases, scales and norms), and a visual projection's
    weights (not its feature statistics)."""
    prompts = sum(t.numel() for layer in adapter.layers.values() for t in layer.values())
    prompts += sum(t.numel() for t in adapter.v2_tensors.values())
    visual = sum(t.numel() for key, t in adapter.extra_tensors.items() if not key.endswith(_VISUAL_BUFFERS))
    return {"adapter": prompts, "visual": visual, "total": prompts + visual}


def check_base(adapter: AdapterFile, identity: BaseIdentity) -> None:
    """Refuse an adapter made for another base, naming the base it was made for when the file records it."""
    if adapter.base.mismatch(identity):
        named = recorded_source(adapter)
        made_for = f"{named.get('spec') or named.get('name_or_path')!r}: " if named else ""
        raise MMAdapterError(f"{adapter.path}: made for {made_for}{adapter.base.describe()}, but this base is "
                             f"{identity.describe()}")


# ----- writing a folder ------------------------------------------------------------------------------------------

def write_folder(target: Path, write_weights: Callable[[Path], Path]) -> Path:
    """Write an adapter folder: ``write_weights(path)`` writes the safetensors file; the JSON and the card are made
    from what it wrote. A new folder (or one holding only these files) is replaced whole and atomically; in a
    folder that holds other files too (a tokenizer saved beside), each file is replaced atomically, the rest kept."""
    def fill(folder: Path) -> None:
        config = folder_config(read_adapter(write_weights(folder / WEIGHTS_NAME)))
        atomic_write_text(folder / CARD_NAME, model_card(config, target.name))
        atomic_write_json(folder / CONFIG_NAME, config, indent=2)  # last: a reader checks it against the weights

    if _holds_other_files(target):
        fill(target)
    else:
        with atomic_dir(target, overwrite=True) as staging:
            fill(staging)
    return target


def _holds_other_files(target: Path) -> bool:
    """Whether ``target`` is a folder with files besides an adapter folder's; never a model folder or a file."""
    if not os.path.lexists(target):
        return False
    if not target.is_dir():
        raise MMAdapterError(f"{target}: exists and is not a folder; an adapter is saved as a folder")
    if os.path.lexists(target / MODEL_CONFIG_NAME):
        raise MMAdapterError(f"{target}: holds a transformers model ({MODEL_CONFIG_NAME}); save the adapter in a "
                             "folder of its own")
    return any(entry.name not in FOLDER_FILES for entry in target.iterdir())


def model_card(config: dict, name: str) -> str:
    """A short README.md: what the adapter is, its base, how to load it, how many parameters it trains."""
    base = config["base_model_spec"] or config["base_model_name_or_path"]
    adapter, identity, counts = config["adapter_config"], config["base_identity"], config["trainable_parameters"]
    shown = f"`{base}`" if base else f"a {identity['architecture']} (which one was not recorded)"
    fingerprint = f", weights fingerprint {identity['fingerprint']}" if identity["fingerprint"] else ""
    visual = f" Images go through {config['visual']['clip_model']} into the prompts." if config["visual"] else ""
    front = ["---", f"library_name: {LIBRARY}", *([f"base_model: {base}"] if _on_hub(base) else []),
             "tags:", "- llama-adapter", "- mm-adapter", "---", ""]
    summary = (f"A LLaMA-Adapter (Zhang et al. 2023, arXiv 2303.16199) for {shown}: {adapter['adapter_len']} "
               f"learnable prompts in each of the top {adapter['adapter_layers']} of its {identity['num_layers']} "
               f"layers, with zero-initialised gates ({adapter['gate_activation']}).{visual} The base stays frozen; "
               "this folder holds only the adapter.")
    if v2 := config.get("adapter_v2"):
        norms = "trained" if v2["train_norms"] else "frozen"
        head = " and the output layer" if v2.get("head") else ""
        summary += (f" LLaMA-Adapter V2: also a bias and scale on the linear layers ({v2['targets']}){head}, {norms} "
                    "norms.")
    return "\n".join([
        *front, f"# {name}", "", summary, "",
        f"- base: {shown} ({identity['architecture']}{fingerprint})",
        f"- trainable parameters: {counts['adapter']:,} adapter + {counts['visual']:,} visual = {counts['total']:,}",
        f"- prompt format: {config['prompt_format'] or 'not recorded'}", "",
        "```python", "from mm_adapter import from_pretrained, load_base", "",
        f'model, tokenizer = load_base("{base or "BASE"}")',
        f'model = from_pretrained(model, "{name}")  # this folder, or its hub id org/name', "```", ""])


def _on_hub(base: str | None) -> bool:
    """Whether a base spec names a hub model (the hub's card metadata takes only those)."""
    return bool(base) and is_hub_id(base) and not os.path.exists(base)
