"""Adapters made elsewhere, on our stack: the official v1 release, PEFT adaption_prompt, litgpt.

Each importer reads a foreign file (safetensors, or a torch pickle through ``load_torch_file``,
which never runs code) and returns our :class:`~mm_adapter.model.adapter_file.AdapterFile` for a given
base, so ``apply_adapter`` puts it on that base and ``save_adapter`` writes it as ours. Formats,
key names and semantics: ``docs/interop.md``.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from mm_adapter.errors import MMAdapterError
from mm_adapter.interop.litgpt import import_litgpt
from mm_adapter.interop.official import import_official
from mm_adapter.interop.peft import export_peft, import_peft
from mm_adapter.model.adapter_file import AdapterFile, apply_adapter, save_adapter
from mm_adapter.pretrained import base_metadata, read_pretrained, save_pretrained

SOURCES = ("official", "peft", "litgpt", "ours", "folder")
TARGETS = ("ours", "peft", "folder")
OURS = ("ours", "folder")  # our single file or an adapter folder (or a hub id): read the same way


OPTIONS = {"official": {"adapter_len", "gate_activation"}, "litgpt": {"layout"}}  # per-format importer options


def import_adapter(model: nn.Module, source: str, path: str | Path, **options) -> AdapterFile:
    """Read ``path`` in format ``source`` as our adapter for ``model`` (not yet applied).

    ``options`` go to the format's importer (official: ``adapter_len``, ``gate_activation``; litgpt: ``layout``).
    """
    if source not in SOURCES:
        raise MMAdapterError(f"unknown adapter format {source!r}; expected one of {', '.join(SOURCES)}")
    foreign = sorted(set(options) - OPTIONS.get(source, set()))
    if foreign:
        raise MMAdapterError(f"options {', '.join(foreign)} do not apply to --from {source}")
    if source == "official":
        return import_official(model, path, **options)
    if source == "litgpt":
        return import_litgpt(model, path, **options)
    if source == "peft":
        return import_peft(model, path)
    return read_pretrained(path)


def load_foreign_adapter(model: nn.Module, source: str, path: str | Path, **options) -> AdapterFile:
    """Import and apply in one call (the counterpart of ``load_adapter`` for foreign files)."""
    adapter = import_adapter(model, source, path, **options)
    apply_adapter(model, adapter)
    return adapter


def check_output(output: str | Path, overwrite: bool) -> Path:
    """Refuse to replace an existing output unless asked (checked before any slow work)."""
    output = Path(output)
    if output.exists() and not overwrite:
        raise MMAdapterError(f"{output}: already exists (use --overwrite to replace it)")
    return output


def convert(model: nn.Module, source: str, path: str | Path, target: str, output: str | Path,
            overwrite: bool = False, **options) -> Path:
    """Import ``path`` onto ``model`` and write it as ``target`` ("ours": one safetensors file; "peft": a PEFT
    folder; "folder": our adapter folder). Ours keeps what the input carries besides prompts and gates (a visual
    projection, the prompt format) and records the base."""
    if target not in TARGETS:
        raise MMAdapterError(f"unknown output format {target!r}; expected one of {', '.join(TARGETS)}")
    output = check_output(output, overwrite)
    adapter = load_foreign_adapter(model, source, path, **options)
    if target == "peft" and adapter.v2 is not None:
        raise MMAdapterError(f"{path}: a LLaMA-Adapter V2 file (biases, scales, norms); PEFT's adaption prompt holds "
                             "prompts and gates only, so --to peft would drop them")
    if target == "peft":
        return export_peft(model, output, overwrite=overwrite)
    metadata = {**adapter.extra_metadata, "imported_from": f"{source}:{Path(path).name}"}
    if target == "folder":
        return save_pretrained(model, output, adapter.extra_tensors, metadata)
    if output.is_dir():
        raise MMAdapterError(f"{output}: is a folder; our adapter format is one .safetensors file (or --to folder)")
    return save_adapter(model, output, adapter.extra_tensors, {**metadata, **base_metadata(model)})


__all__ = ["SOURCES", "TARGETS", "check_output", "convert", "export_peft", "import_adapter", "import_litgpt", "import_official",
           "import_peft", "load_foreign_adapter"]
