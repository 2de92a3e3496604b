"""Adapter folders as PEFT users expect them: ``save_pretrained`` / ``from_pretrained`` / ``push_to_hub``, and the
one place that turns what a user names as an adapter (our single file, a folder, a hub id) into the file to read
(or, for the folder of another ``--method``, with ``mm_adapter.json``, into that folder: ``methods/folders.py``).

A folder holds ``adapter_model.safetensors`` (exactly our single-file format, so ``read_adapter`` reads it),
``adapter_config.json`` (readable without torch: what the adapter is and which base it was made for: the
spec given to ``load_base``, transformers' name or path, the hub revision, the base identity, plus the
adapter config, prompt format, visual config and parameter counts) and a short model card ``README.md``.
The safetensors file stays the source of truth; the JSON must agree with it. A hub id (``org/name``, or
``org/name@revision``) is fetched with huggingface_hub, or found in its cache when ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from mm_adapter.errors import MMAdapterError
from mm_adapter.files.atomic import atomic_dir, atomic_write_json, atomic_write_text
from mm_adapter.files.safe_load import open_safetensors
from mm_adapter.files.text import STRING, Rule, check_fields, parse_json, read_json
from mm_adapter.methods.folders import RECORD_NAME, read_record
from mm_adapter.methods.run_record import describe_taken, run_adapter, run_of
from mm_adapter.model.adapter import adaption_prompts, has_adapter, install_folder_saver
from mm_adapter.model.adapter_file import V2_KEY, AdapterFile, BaseIdentity, apply_adapter, read_adapter, save_adapter
from mm_adapter.model.base import CONFIG_NAME as MODEL_CONFIG_NAME
from mm_adapter.model.base import base_source
from mm_adapter.pretrained.hub import hub_errors, hub_offline, hub_snapshot, is_hub_id, is_repo_id, split_revision

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
CARD_NAME = "README.md"
FOLDER_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME)
FOLDER_FORMAT = "mm-adapter-folder/1"
METHOD = "llama-adapter"
LIBRARY = "mm-adapter"
BASE_SOURCE_KEY = "base_source"  # adapter file metadata: JSON {spec, name_or_path, revision} of the base
VISUAL_KEY = "visual"  # adapter file metadata of a visual adapter (encoders.projection.visual_extras)
LOADED_ATTR = "mm_adapter_loaded"  # what from_pretrained put on a model (see Loaded)
TRAINING_PROJECTION = "visual_projection"  # training.multimodal.PROJECTION_ATTR (not imported: it pulls in open_clip)
_VISUAL_BUFFERS = ("feature_mean", "feature_std")  # stored with the projection, not trained
_OBJECT = Rule(lambda value: isinstance(value, dict), "a JSON object")
_REQUIRED = {"format": STRING, "method": STRING, "adapter_config": _OBJECT, "base_identity": _OBJECT}
_OPTIONAL = {"library_name": STRING, "base_model_name_or_path": STRING, "base_model_spec": STRING,
             "revision": STRING, "prompt_format": STRING, "visual": _OBJECT, "trainable_parameters": _OBJECT,
             "adapter_v2": _OBJECT}
_EXPECTED = {"format": FOLDER_FORMAT, "method": METHOD}
# adapter_config.json field -> the adapter file's metadata key holding the same JSON
_AGREES_WITH = {"adapter_config": "config", "base_identity": "base", "adapter_v2": V2_KEY}


# ----- which file an adapter name means -----------------------------------------------------------------------

Say = Callable[[str], None] | None


def resolve_adapter(spec: str | os.PathLike, revision: str | None = None, say: Say = None) -> Path:
    """The LLaMA-Adapter file ``spec`` names (see :func:`locate_adapter`); another method's folder is refused in one
    line. Every place that takes only our adapters calls this."""
    method, path = locate_adapter(spec, revision, say)
    if method != METHOD:
        raise MMAdapterError(f"{spec}: a {method} folder ({RECORD_NAME}), not a LLaMA-Adapter; only eval scienceqa, "
                             "demo, serve and generate load other methods")
    return path


def locate_adapter(spec: str | os.PathLike, revision: str | None = None, say: Say = None) -> tuple[str, Path]:
    """``(method, path)`` of what ``spec`` names: our single ``.safetensors`` file (returned as given:
    ``read_adapter`` says what is wrong with it), a folder (another method's, with ``mm_adapter.json``: the
    folder; ours: its weights, after its ``adapter_config.json`` is checked; a training run's: its chosen adapter,
    else its final one, which ``say`` is told), or a hub id ``org/name[@revision]`` fetched into (or, offline,
    found in) the hub cache. Every place that takes an adapter calls this."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return _in_folder(path, say=say)
    if os.path.lexists(path) or not is_hub_id(str(spec)):
        if revision is not None:
            raise MMAdapterError(f"{spec}: a revision applies only to an adapter on the hub (org/name)")
        return METHOD, path
    repo_id, pinned = split_revision(str(spec))
    return _in_folder(hub_snapshot(repo_id, revision or pinned, [*FOLDER_FILES, RECORD_NAME]), label=str(spec))


def _in_folder(folder: Path, label: str | None = None, say: Say = None) -> tuple[str, Path]:
    """``(method, path)`` of an adapter folder: another method's folder itself, our folder's weights file, or the
    adapter a training run's folder stands for (``methods/run_record.py``)."""
    if os.path.lexists(folder / RECORD_NAME):
        return read_record(folder)["method"], folder
    if label is None and (taken := _run_adapter(folder)) is not None:
        path, role, why = taken
        describe_taken(folder, path, role, why, say)
        return _in_folder(path) if path.is_dir() else (METHOD, path)
    return METHOD, folder_weights(folder, label)


def _run_adapter(folder: Path) -> tuple[Path, str, str] | None:
    """What a run folder stands for; None for an adapter folder or a folder that is no run."""
    if os.path.lexists(folder / CONFIG_NAME) or run_of(folder) != folder:
        return None
    return run_adapter(folder)


def recorded_format(adapter: str | os.PathLike) -> str | None:
    """The prompt format an adapter (our file, or a method folder from :func:`locate_adapter`) was trained on."""
    path = Path(adapter)
    if path.is_dir():
        return read_record(path).get("prompt_format")
    return read_adapter(path).prompt_format


def adapter_name(spec: str | os.PathLike) -> str:
    """A short name for an adapter (what ``--use`` takes): a training run's adapter is ``RUN/best`` or
    ``RUN/adapter`` (its run's folder name, then which of its adapters), so two runs never share a name; else a
    file's stem, a folder's name, a hub repo's name."""
    path = Path(spec).expanduser()
    run = run_of(path)
    if run is not None:
        taken = _run_adapter(path) if path.is_dir() else None
        adapter = taken[0] if taken else path
        return f"{run.resolve().name}/{adapter.name.removesuffix('.safetensors')}"
    if path.suffix == ".safetensors" and not path.is_dir():
        return path.stem
    return path.name.partition("@")[0]


def read_pretrained(spec: str | os.PathLike, revision: str | None = None, say: Say = None) -> AdapterFile:
    """``read_adapter`` of whatever ``spec`` names (file, folder, training run or hub id)."""
    return read_adapter(resolve_adapter(spec, revision, say))


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

def save_pretrained(model: nn.Module, save_directory: str | os.PathLike,
                    extra_tensors: dict[str, torch.Tensor] | None = None,
                    extra_metadata: dict[str, str] | None = None) -> Path:
    """Write ``model``'s adapter as a folder (what PEFT's ``save_pretrained`` writes for its adapters).

    ``extra_tensors`` / ``extra_metadata`` are as for ``save_adapter`` (``visual_extras(...)`` for a visual adapter,
    ``{adapter_file.PROMPT_FORMAT_KEY: fmt}``); by default, what :func:`from_pretrained` put on the model. The base
    the model was loaded from is recorded. Returns the folder.
    """
    if not has_adapter(model):
        raise MMAdapterError("this model has no adapter to save; attach_adapter or from_pretrained first")
    tensors, metadata = _extras(model, extra_tensors, extra_metadata)
    metadata = {**metadata, **base_metadata(model)}
    return write_folder(Path(save_directory), lambda path: save_adapter(model, path, tensors, metadata))


def _extras(model: nn.Module, tensors: dict | None, metadata: dict | None) -> tuple[dict, dict]:
    """What besides prompts and gates goes into the folder: the given extras, else what from_pretrained recorded."""
    if tensors is not None or metadata is not None:
        return tensors or {}, metadata or {}
    loaded = loaded_adapter(model)
    if loaded is not None:
        return loaded.adapter.extra_tensors, loaded.adapter.extra_metadata
    if hasattr(model, TRAINING_PROJECTION):
        raise MMAdapterError("this model has a visual projection but no visual config to save with it; use "
                             "mm_adapter.save_pretrained(model, folder, *visual_extras(config, projection, encoder))")
    return {}, {}


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


# ----- loading and pushing ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Loaded:
    """What :func:`from_pretrained` put on a model besides prompts and gates: the file it read (its visual part
    and prompt format go back into ``model.save_pretrained``) and, for a visual adapter, the frozen encoder and
    projection that turn an image into the prompt offset."""

    adapter: AdapterFile
    prompts: tuple[nn.Module, ...]  # the adaption prompts it filled: a detach/attach since makes this stale
    encoder: nn.Module | None = None
    projection: nn.Module | None = None


def loaded_adapter(model: nn.Module) -> Loaded | None:
    """What :func:`from_pretrained` put on ``model``, while its adapter is still the one it attached."""
    loaded = getattr(model, LOADED_ATTR, None)
    if loaded is None or tuple(adaption_prompts(model).values()) != loaded.prompts:  # modules compare by identity
        return None
    return loaded


def from_pretrained(base_model: nn.Module, adapter: str | os.PathLike, revision: str | None = None,
                    device: torch.device | str | None = None) -> nn.Module:
    """Put the adapter ``adapter`` names (folder, hub id ``org/name``, or our single file) on ``base_model`` and
    return it. A visual adapter's encoder and projection are built too (``loaded_adapter(model)``). A file made
    for another base is refused before the model is touched."""
    found = read_pretrained(adapter, revision)
    check_base(found, BaseIdentity.of(base_model))
    visual = None
    if VISUAL_KEY in found.extra_metadata:
        from mm_adapter.encoders.projection import apply_multimodal  # open_clip: only for adapters that need it

        visual = apply_multimodal(base_model, found, device)
    else:
        apply_adapter(base_model, found)
    setattr(base_model, LOADED_ATTR, Loaded(found, tuple(adaption_prompts(base_model).values()), *(visual or ())))
    return base_model


def load_multimodal_adapter(model: nn.Module, path, device: torch.device | str | None = None
                            ) -> tuple | None:
    """Apply the adapter ``path`` names (our file, an adapter folder or a hub id) to ``model``; if it has a visual
    part, also build its frozen encoder (from the recorded config, checked against the recorded identity) and
    its projection.

    One call for evaluation and demos. Returns None for a text-only adapter (still applied). The whole
    file is checked before the model is touched or the encoder's weights are allocated.
    """
    from mm_adapter.encoders.projection import apply_multimodal  # open_clip: only for adapters that need it

    return apply_multimodal(model, read_pretrained(path), device)


def push_to_hub(folder: str | os.PathLike, repo_id: str, token: str | None = None, private: bool = False) -> str:
    """Upload an adapter folder to the hub repo ``repo_id`` (created if missing); returns the commit's URL.

    Without a token (``token``, ``HF_TOKEN`` or a cached login) or with ``HF_HUB_OFFLINE=1`` it refuses in one
    line before any network call.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MMAdapterError(f"{folder}: not an adapter folder; write one with save_pretrained or "
                             "mm-adapter convert --to folder")
    if _run_adapter(folder) is not None:  # what is uploaded is the folder's own files, which a run folder lacks
        raise MMAdapterError(f"{folder}: a training run's folder, not an adapter folder; write its adapter as one "
                             f"with mm-adapter convert {folder} OUT --to folder, then push OUT")
    resolve_adapter(folder)  # another method's folder is refused in one line
    if not is_repo_id(repo_id):
        raise MMAdapterError(f"{repo_id!r}: not a hub repo id; expected org/name")
    from huggingface_hub import HfApi, get_token

    token = token or get_token()
    if not token:
        raise MMAdapterError("pushing to the hub needs a token: set HF_TOKEN or log in with `hf auth login` "
                             "(nothing was sent)")
    if hub_offline():
        raise MMAdapterError("HF_HUB_OFFLINE=1: cannot push to the hub (nothing was sent)")
    api = HfApi(token=token)
    with hub_errors(f"{repo_id}: could not push {folder}"):
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=folder, allow_patterns=list(FOLDER_FILES),
                                   commit_message=f"Upload {LIBRARY} adapter {folder.name}")
    return str(commit.commit_url)


install_folder_saver(save_pretrained)  # model.save_pretrained on an adapted model writes this folder
