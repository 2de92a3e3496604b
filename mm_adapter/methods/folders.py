"""Folders of the methods other than ours (``--method``): writing them, reading their record, loading a PEFT one
(the one loader of a model with any method's adapter is ``inference/loading.py``).

* PEFT methods: ``PeftModel.save_pretrained`` writes its ``adapter_config.json``, ``adapter_model.safetensors``
  and card, untouched, so ``PeftModel.from_pretrained(base, folder)`` loads the folder anywhere; we load it so.
* ``full``: the whole model (``save_pretrained``: fp32, ~540 MB for SmolLM2-135M) with its tokenizer. It is
  loaded as the base: ``--adapter`` replaces ``--base``.

Beside them, ``mm_adapter.json`` records what the folder is: format, method, the base it was made from (spec,
name or path, revision, identity), the method's sizes, the prompt format, the trainable count, and for a
``best/`` folder the val accuracy and step. It is a file of its own because transformers takes a folder
holding an ``adapter_config.json`` for a PEFT adapter (a full model folder with ours in it would not load),
and PEFT warns about fields it does not know. Our single-file adapters and their folders are
``model/adapter_file.py`` and ``pretrained/adapter_folder.py``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from mm_adapter.errors import MMAdapterError
from mm_adapter.files.atomic import atomic_dir, atomic_write_json
from mm_adapter.files.safe_load import one_line
from mm_adapter.files.text import STRING, Rule, check_fields, read_json
from mm_adapter.methods.config import FULL, METHODS, OUR_METHODS

if TYPE_CHECKING:  # the record and digest readers (``table``'s costs) stay free of torch, transformers and PEFT
    from torch import nn

    from mm_adapter.methods.attach import Tuned
    from mm_adapter.training.trainer import TrainResult

RECORD_NAME = "mm_adapter.json"
ADAPTER_FOLDER, BEST_FOLDER = "adapter", "best"  # another method's adapter.safetensors and best.safetensors
RECORD_FORMAT = "mm-adapter-folder/1"  # adapter_folder.FOLDER_FORMAT: one format of folders, two kinds of record
LIBRARY = "mm-adapter"
BASE_IDENTITY_ATTR = "mm_adapter_base_identity"  # on a loaded PeftModel: its base's identity, taken before PEFT
FOLDER_METHODS = tuple(m for m in METHODS if m not in OUR_METHODS)
_OBJECT = Rule(lambda value: isinstance(value, dict), "a JSON object")
_REQUIRED = {"format": STRING, "method": STRING, "base_identity": _OBJECT, "sizes": _OBJECT}
_OPTIONAL = {"library_name": STRING, "base_model_spec": STRING, "base_model_name_or_path": STRING,
             "revision": STRING, "prompt_format": STRING, "trainable_parameters": _OBJECT, "metadata": _OBJECT}


def read_record(folder: Path) -> dict:
    """``mm_adapter.json`` of a method folder, type-checked; anything wrong is one line naming the file."""
    path = folder / RECORD_NAME
    data = read_json(path, "method record", expect=dict)
    check_fields(data, path, "method record", _REQUIRED, _OPTIONAL)
    if data["format"] != RECORD_FORMAT:
        raise MMAdapterError(f"{path}: field 'format' is {data['format'][:60]!r}, expected {RECORD_FORMAT!r}")
    if data["method"] not in FOLDER_METHODS:
        raise MMAdapterError(f"{path}: field 'method' is {data['method'][:60]!r}, expected one of "
                             f"{', '.join(FOLDER_METHODS)}")
    return data


def record(tuned: Tuned, prompt_format: str | None, metadata: dict[str, str] | None = None) -> dict:
    """What ``mm_adapter.json`` says about a folder saved from ``tuned``."""
    return {"format": RECORD_FORMAT, "method": tuned.method, "library_name": LIBRARY,
            "base_model_spec": tuned.source.get("spec"), "base_model_name_or_path": tuned.source.get("name_or_path"),
            "revision": tuned.source.get("revision"), "base_identity": dataclasses.asdict(tuned.base),
            "sizes": tuned.sizes, "prompt_format": prompt_format,
            "trainable_parameters": {"total": tuned.trainable}, "metadata": metadata or {}}


def save_method_folder(tuned: Tuned, folder: str | os.PathLike, prompt_format: str | None, tokenizer=None,
                       metadata: dict[str, str] | None = None) -> Path:
    """Write ``tuned``'s folder atomically (a folder already there is replaced whole); ``tokenizer`` goes into a
    full fine-tune's folder, which is then a complete model folder."""
    if tuned.method not in FOLDER_METHODS:
        raise MMAdapterError(f"{tuned.method} is saved as our adapter file (save_adapter), not a method folder")
    with atomic_dir(folder, overwrite=True) as staging:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # transformers' deprecations met inside PEFT
            tuned.model.save_pretrained(staging)
        if tuned.method == FULL:
            tokenizer.save_pretrained(staging)
        atomic_write_json(staging / RECORD_NAME, record(tuned, prompt_format, metadata), indent=2)
    return Path(folder)


def folder_saver(tuned: Tuned, prompt_format: str | None, tokenizer=None) -> Callable[[nn.Module, Path, dict], Path]:
    """``save(model, folder, metadata)`` for the trainer's export and the val-based choice (the model is
    ``tuned.model``: the trainer hands back what it was given)."""
    return lambda model, folder, metadata=None: save_method_folder(tuned, folder, prompt_format, tokenizer, metadata)


def exported(method: str, path: Path) -> Path:
    """Where the trainer's export lands when handed ``path`` (``OUT/adapter.safetensors``): there for ours, the
    folder ``OUT/adapter/`` for another method."""
    return path if method in OUR_METHODS else path.with_name(ADAPTER_FOLDER)


def trainer_export(tuned: Tuned, ours: Callable[[nn.Module, Path], object], prompt_format: str | None,
                   tokenizer=None) -> Callable[[nn.Module, Path], object]:
    """The trainer's ``export(model, path)``: ``ours`` (our adapter file) for llama-adapter and its V2, else the
    method's folder at :func:`exported`."""
    if tuned.method in OUR_METHODS:
        return ours
    save = folder_saver(tuned, prompt_format, tokenizer)
    return lambda model, path: save(model, exported(tuned.method, path))


def relocated(result: TrainResult, method: str) -> TrainResult:
    """The trainer's result naming the export where :func:`trainer_export` put it."""
    if result.adapter_path is None:
        return result
    return dataclasses.replace(result, adapter_path=exported(method, result.adapter_path))


def load_peft_folder(model: nn.Module, folder: Path) -> nn.Module:
    """The PEFT method of ``folder`` on the base ``model`` (refused, in one line, if the folder was made from
    another base), in eval mode, its virtual tokens routed into our decoder calls."""
    from mm_adapter.methods.attach import peft_module
    from mm_adapter.methods.virtual_tokens import route_virtual_tokens
    from mm_adapter.model.adapter_file import BaseIdentity

    found = read_record(folder)
    made_for = BaseIdentity.from_dict(found["base_identity"], folder / RECORD_NAME)
    identity = BaseIdentity.of(model)
    if made_for.mismatch(identity):
        named = found.get("base_model_spec") or found.get("base_model_name_or_path")
        raise MMAdapterError(f"{folder}: made for {f'{named!r}: ' if named else ''}{made_for.describe()}, but this "
                             f"base is {identity.describe()}")
    peft = peft_module()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            loaded = peft.PeftModel.from_pretrained(model, folder)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as error:
        raise MMAdapterError(f"{folder}: PEFT could not load this {found['method']} folder ({one_line(error)})") \
            from None
    setattr(loaded, BASE_IDENTITY_ATTR, identity)
    return route_virtual_tokens(loaded.eval())


def adapter_digest(path: str | os.PathLike) -> str:
    """16 hex digits of sha256: of an adapter file's bytes, or of a method folder's files (names and digests, in
    name order), so a retrained adapter never resumes another's partial predictions."""
    path = Path(path)
    if not path.is_dir():
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()[:16]
    digest = hashlib.sha256()
    for file in sorted(p for p in path.iterdir() if p.is_file()):
        digest.update(f"{file.name}\0{adapter_digest(file)}\n".encode())
    return digest.hexdigest()[:16]
