"""Upload an adapter folder to the Hugging Face hub (``mm-adapter push``).

The folder is checked first (``adapter_config.json`` agreeing with ``adapter_model.safetensors``); without a
token (``HF_TOKEN`` or a cached ``hf auth login``), or with ``HF_HUB_OFFLINE=1``, the push is refused in one
line before any network call. Only the folder's three files are uploaded.
"""

from __future__ import annotations

from mm_adapter.jobs.configs.interop import PushConfig
from mm_adapter.pretrained import push_to_hub


def push(config: PushConfig) -> str:
    """Create ``config.repo`` if needed and upload the folder; returns the commit's URL."""
    return push_to_hub(config.adapter, config.repo, private=config.private)
