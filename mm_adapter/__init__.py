"""mm-adapter: LLaMA-Adapter (zero-init gated adaption prompts) on frozen transformers models.

The public names below are imported lazily (PEP 562): ``import mm_adapter.model.config`` or the
``mm-adapter --help`` command must not pay for torch and transformers, which only the model
functions need. ``from mm_adapter import attach_adapter`` works as usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "model.adapter": ("adapter_config", "adapter_parameters", "attach_adapter", "count_trainable", "detach_adapter",
                      "has_adapter", "is_adapter_parameter", "prompt_offset"),
    "model.base": ("load_base",),
    "model.adapter_file": ("AdapterFile", "BaseIdentity", "apply_adapter", "load_adapter", "read_adapter",
                           "save_adapter"),
    "model.config": ("AdapterConfig",),
    "encoders.config": ("VisualConfig",),
    "errors": ("MMAdapterError",),
    "pretrained": ("from_pretrained", "push_to_hub", "save_pretrained"),
    "training.config": ("TrainConfig",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "AdapterConfig", "AdapterFile", "BaseIdentity", "MMAdapterError", "TrainConfig", "VisualConfig", "adapter_config",
    "adapter_parameters", "apply_adapter", "attach_adapter", "count_trainable", "detach_adapter", "from_pretrained",
    "has_adapter", "is_adapter_parameter", "load_adapter", "load_base", "prompt_offset", "push_to_hub", "read_adapter",
    "save_adapter", "save_pretrained",
]

if TYPE_CHECKING:  # static tools see the real names
    from mm_adapter.encoders.config import VisualConfig
    from mm_adapter.errors import MMAdapterError
    from mm_adapter.model.adapter import (
        adapter_config, adapter_parameters, attach_adapter, count_trainable, detach_adapter, has_adapter,
        is_adapter_parameter, prompt_offset,
    )
    from mm_adapter.model.adapter_file import (
        AdapterFile, BaseIdentity, apply_adapter, load_adapter, read_adapter, save_adapter,
    )
    from mm_adapter.model.base import load_base
    from mm_adapter.model.config import AdapterConfig
    from mm_adapter.pretrained import from_pretrained, push_to_hub, save_pretrained
    from mm_adapter.training.config import TrainConfig


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'mm_adapter' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    if module.startswith("model."):
        importlib.import_module(".pretrained", __name__)  # installs model.save_pretrained's folder writer
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
