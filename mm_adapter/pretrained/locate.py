"""The one place that turns what a user names as an adapter (our single file, a folder, a training run's folder,
a hub id) into the file to read (or, for the folder of another ``--method``, with ``mm_adapter.json``, into that
folder: ``methods/folders.py``).

A hub id (``org/name``, or ``org/name@revision``) is fetched with huggingface_hub, or found in its cache when
``HF_HUB_OFFLINE=1``; an adapter folder's own files are ``adapter_folder.py``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from mm_adapter.errors import MMAdapterError
from mm_adapter.methods.folders import RECORD_NAME, read_record
from mm_adapter.methods.run_record import describe_taken, run_adapter, run_of
from mm_adapter.model.adapter_file import AdapterFile, read_adapter
from mm_adapter.pretrained.adapter_folder import CONFIG_NAME, FOLDER_FILES, METHOD, folder_weights
from mm_adapter.pretrained.hub import hub_snapshot, is_hub_id, split_revision

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
    if label is None and (taken := run_folder_adapter(folder)) is not None:
        path, role, why = taken
        describe_taken(folder, path, role, why, say)
        return _in_folder(path) if path.is_dir() else (METHOD, path)
    return METHOD, folder_weights(folder, label)


def run_folder_adapter(folder: Path) -> tuple[Path, str, str] | None:
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
        taken = run_folder_adapter(path) if path.is_dir() else None
        adapter = taken[0] if taken else path
        return f"{run.resolve().name}/{adapter.name.removesuffix('.safetensors')}"
    if path.suffix == ".safetensors" and not path.is_dir():
        return path.stem
    return path.name.partition("@")[0]


def read_pretrained(spec: str | os.PathLike, revision: str | None = None, say: Say = None) -> AdapterFile:
    """``read_adapter`` of whatever ``spec`` names (file, folder, training run or hub id)."""
    return read_adapter(resolve_adapter(spec, revision, say))
