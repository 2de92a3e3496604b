"""mm-adapter: LLaMA-Adapter (zero-init gated adaption prompts) on frozen transformers models."""

from .adapter import (
    adapter_config,
    adapter_parameters,
    attach_adapter,
    count_trainable,
    detach_adapter,
    has_adapter,
    is_adapter_parameter,
    prompt_offset,
)
from .base import load_base
from .checkpoint import AdapterFile, BaseIdentity, apply_adapter, load_adapter, read_adapter, save_adapter
from .config import AdapterConfig
from .errors import MMAdapterError

__all__ = [
    "AdapterConfig",
    "AdapterFile",
    "BaseIdentity",
    "MMAdapterError",
    "adapter_config",
    "adapter_parameters",
    "apply_adapter",
    "attach_adapter",
    "count_trainable",
    "detach_adapter",
    "has_adapter",
    "is_adapter_parameter",
    "load_adapter",
    "load_base",
    "prompt_offset",
    "read_adapter",
    "save_adapter",
]
