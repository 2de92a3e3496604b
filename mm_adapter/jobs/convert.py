"""Convert an adapter between the official LLaMA-Adapter v1 release, PEFT, litgpt and ours (``mm-adapter convert``).

The base gives the shapes every tensor is checked against and the fingerprint our files carry.
Foreign pickles are read with ``weights_only=True`` (never code); everything written is
safetensors. An existing OUTPUT is refused unless ``overwrite``, and an OUTPUT that is INPUT or the
base (or, for a PEFT folder, holds one of them) always, before the base is loaded.
"""

from __future__ import annotations

from pathlib import Path

from ..base import load_base
from ..interop import check_output
from ..interop import convert as convert_adapter
from ..outputs import Output, check_no_overlap
from .configs import ConvertConfig
from .runtime import prepare


def convert(config: ConvertConfig) -> Path:
    """Write INPUT (format ``source``) as OUTPUT (format ``target``) for the given base; returns OUTPUT."""
    prepare(config.model)
    options = {}
    if config.adapter_len is not None:
        options["adapter_len"] = config.adapter_len
    if config.official_gate is not None:
        options["gate_activation"] = config.official_gate
    written = Output("OUTPUT", Path(config.output), folder=config.target == "peft")  # a PEFT folder is replaced whole
    check_no_overlap([written], {"INPUT": config.input, "--base": config.model.base})
    output = check_output(config.output, config.overwrite)  # before minutes of base loading
    model, _ = load_base(config.model.base, dtype=config.model.dtype)
    return convert_adapter(model, config.source, config.input, config.target, output, overwrite=config.overwrite,
                           **options)
