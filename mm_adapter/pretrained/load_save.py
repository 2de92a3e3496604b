"""A model's adapter and its folder, as PEFT users expect them: ``from_pretrained`` puts the adapter a user names on
a model (a visual one with its frozen encoder and projection), ``save_pretrained`` writes a model's adapter as a
folder (also as ``model.save_pretrained``), ``push_to_hub`` uploads a folder to the hub.

What a folder holds is ``adapter_folder.py``; which file a name means is ``locate.py``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mm_adapter.errors import MMAdapterError
from mm_adapter.model.adapter import adaption_prompts, has_adapter, install_folder_saver
from mm_adapter.model.adapter_file import AdapterFile, BaseIdentity, apply_adapter, save_adapter
from mm_adapter.pretrained.adapter_folder import (
    FOLDER_FILES, LIBRARY, VISUAL_KEY, base_metadata, check_base, write_folder,
)
from mm_adapter.pretrained.hub import hub_errors, hub_offline, is_repo_id
from mm_adapter.pretrained.locate import read_pretrained, resolve_adapter, run_folder_adapter

LOADED_ATTR = "mm_adapter_loaded"  # what from_pretrained put on a model (see Loaded)
TRAINING_PROJECTION = "visual_projection"  # training.multimodal.PROJECTION_ATTR (not imported: it pulls in open_clip)


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
    if run_folder_adapter(folder) is not None:  # what is uploaded is the folder's own files, which a run folder lacks
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
