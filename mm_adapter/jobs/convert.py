"""Convert an adapter between the official LLaMA-Adapter v1 release, PEFT, litgpt and ours (``mm-adapter convert``).

The base gives the shapes every tensor is checked against and the fingerprint our files carry.
Foreign pickles are read with ``weights_only=True`` (never code); everything written is
safetensors. An existing OUTPUT is refused unless ``overwrite``, and an OUTPUT that is INPUT or the
base (or, for a PEFT or adapter folder, holds one of them) always, before the base is loaded. Ours may be
a single file, an adapter folder or a hub id (``--from ours`` or ``folder``); ``--to folder`` writes the
folder ``mm_adapter.save_pretrained`` writes; ``--to merged`` takes a LLaMA-Adapter V2 adapter of ours and writes
a plain transformers model folder (bias/scale and norms merged) plus its prompts and gates as our adapter file.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mm_adapter.errors import MMAdapterError
from mm_adapter.files.output_folder import Output, check_no_overlap
from mm_adapter.interop import OURS, check_output
from mm_adapter.interop import convert as convert_adapter
from mm_adapter.interop.merged import export_merged
from mm_adapter.jobs.configs.interop import ConvertConfig
from mm_adapter.jobs.runtime import prepare
from mm_adapter.model.adapter_file import load_adapter, read_adapter
from mm_adapter.model.base import load_base
from mm_adapter.pretrained import resolve_adapter


def convert(config: ConvertConfig) -> Path:
    """Write INPUT (format ``source``) as OUTPUT (format ``target``) for the given base; returns OUTPUT."""
    prepare(config.model)
    options = {}
    if config.adapter_len is not None:
        options["adapter_len"] = config.adapter_len
    if config.official_gate is not None:
        options["gate_activation"] = config.official_gate
    if config.litgpt_layout is not None:
        options["layout"] = config.litgpt_layout
    written = Output("OUTPUT", Path(config.output), folder=config.target != "ours")  # a folder is replaced whole
    say = lambda line: print(line, file=sys.stderr)  # which adapter of a run folder was taken
    source = resolve_adapter(config.input, say=say) if config.source in OURS else config.input  # a hub id: fetched
    check_no_overlap([written], {"INPUT": source, "--base": config.model.base})
    output = check_output(config.output, config.overwrite)  # before minutes of base loading
    if config.target == "merged":
        return _merge(config, source, output)
    model, _ = load_base(config.model.base, dtype=config.model.dtype)
    return convert_adapter(model, config.source, config.input, config.target, output, overwrite=config.overwrite,
                           **options)


def _merge(config: ConvertConfig, source: Path | str, output: Path) -> Path:
    """``--to merged``: INPUT checked to be a text-only V2 adapter of ours before the base loads, then exported."""
    if config.source not in OURS:
        raise MMAdapterError(f"--to merged: INPUT must be our adapter (--from ours or folder), not --from "
                             f"{config.source}; convert it to ours first")
    adapter = read_adapter(source)
    if adapter.v2 is None:
        raise MMAdapterError(f"{config.input}: no LLaMA-Adapter V2 part (bias/scale) to merge; only a "
                             "--method llama-adapter-v2 adapter can be merged (--to merged)")
    if adapter.extra_tensors:
        raise MMAdapterError(f"{config.input}: holds a visual projection; --to merged exports text-only V2 adapters "
                             "(early fusion is not part of a plain prompt adapter)")
    model, tokenizer = load_base(config.model.base, dtype=config.model.dtype)
    load_adapter(model, source)
    return export_merged(model, tokenizer, output, overwrite=config.overwrite,
                         metadata={"merged_from": Path(config.input).name})
