"""The configs of convert (an adapter between the official release, PEFT, litgpt and ours) and push (an adapter
folder to the Hugging Face hub): moving a trained adapter to where others use it. The format names are spelled out
here, torch-free, so the command's choices need no import of the converters."""

from __future__ import annotations

from dataclasses import dataclass, field

from mm_adapter.fields import check, check_positive, option
from mm_adapter.model.config import GATE_ACTIVATIONS, ModelOptions

CONVERT_SOURCES = ("official", "peft", "litgpt", "ours", "folder")
CONVERT_TARGETS = ("ours", "peft", "folder", "merged")
LITGPT_LAYOUTS = ("pre-0.5.5", "0.5.5+")  # mm_adapter.interop.litgpt.LAYOUTS (that module imports torch)


@dataclass
class ConvertConfig:
    """Convert an adapter between the official LLaMA-Adapter v1 release, PEFT, litgpt and ours (one file, or a
    folder like PEFT's)."""

    input: str = option(positional=True, metavar="INPUT")
    """foreign file (official, litgpt), PEFT folder, or ours: a .safetensors file, an adapter folder or a hub id
    (--from ours or folder)"""
    output: str = option(positional=True, metavar="OUTPUT")
    """our .safetensors file, a PEFT folder, an adapter folder (--to folder: adapter_config.json,
    adapter_model.safetensors, README.md), or --to merged: a plain transformers model folder with the V2 bias/scale
    and norms merged in, plus prompt_adapter.safetensors (the prompts and gates)"""
    source: str = option("ours", alias="--from", choices=CONVERT_SOURCES)
    """format of INPUT"""
    target: str = option("ours", alias="--to", choices=CONVERT_TARGETS)
    """format of OUTPUT"""
    adapter_len: int | None = None
    """official only: prompts per layer (not stored in the file; default 10)"""
    official_gate: str | None = option(None, choices=GATE_ACTIVATIONS)
    """official only: identity = its inference code (default), tanh = its training code"""
    litgpt_layout: str | None = option(None, choices=LITGPT_LAYOUTS)
    """litgpt only: the fused qkv layout of the litgpt that wrote INPUT (its files do not say); needed where the two
    differ, i.e. on a base with more than one key/value head"""
    overwrite: bool = False
    """replace an existing OUTPUT"""
    model: ModelOptions = field(default_factory=ModelOptions)

    def __post_init__(self) -> None:
        check_positive(self, "adapter_len")
        check(self, "source", choices=CONVERT_SOURCES)
        check(self, "target", choices=CONVERT_TARGETS)
        check(self, "litgpt_layout", choices=LITGPT_LAYOUTS, optional=True)


@dataclass
class PushConfig:
    """Upload an adapter folder to the Hugging Face hub (needs a token: HF_TOKEN or `hf auth login`)."""

    adapter: str
    """adapter folder (adapter_config.json + adapter_model.safetensors + README.md), e.g. from convert --to folder"""
    repo: str
    """hub repo id org/name (created if it does not exist)"""
    private: bool = False
    """create the repo as private (an existing repo keeps its visibility)"""
