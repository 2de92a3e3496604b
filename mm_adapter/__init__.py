"""mm-adapter: LLaMA-Adapter (zero-init gated adaption prompts) on frozen transformers models.

The public names below are imported lazily (PEP 562): ``import mm_adapter.config`` or the
``mm-adapter --help`` command must not pay for torch and transformers, which only the model
functions need. ``from mm_adapter import attach_adapter`` works as usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "adapter": ("adapter_config", "adapter_parameters", "attach_adapter", "count_trainable", "detach_adapter",
                "has_adapter", "is_adapter_parameter", "prompt_offset"),
    "base": ("load_base",),
    "checkpoint": ("AdapterFile", "BaseIdentity", "apply_adapter", "load_adapter", "read_adapter", "save_adapter"),
    "config": ("AdapterConfig", "VisualConfig"),
    "errors": ("MMAdapterError",),
    "pretrained": ("from_pretrained", "push_to_hub", "save_pretrained"),
    "train_config": ("TrainConfig",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "AdapterConfig", "AdapterFile", "BaseIdentity", "MMAdapterError", "TrainConfig", "VisualConfig", "adapter_config",
    "adapter_parameters", "apply_adapter", "attach_adapter", "count_trainable", "detach_adapter", "from_pretrained",
    "has_adapter", "is_adapter_parameter", "load_adapter", "load_base", "prompt_offset", "push_to_hub", "read_adapter",
    "save_adapter", "save_pretrained",
]

if TYPE_CHECKING:  # static tools see the real names
    from .adapter import (adapter_config, adapter_parameters, attach_adapter, count_trainable, detach_adapter,
                          has_adapter, is_adapter_parameter, prompt_offset)
    from .base import load_base
    from .checkpoint import AdapterFile, BaseIdentity, apply_adapter, load_adapter, read_adapter, save_adapter
    from .config import AdapterConfig, VisualConfig
    from .errors import MMAdapterError
    from .pretrained import from_pretrained, push_to_hub, save_pretrained
    from .train_config import TrainConfig


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'mm_adapter' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
