"""Adapter folders as PEFT users expect them: what a folder holds, read, checked and written (``adapter_folder``),
the one place that turns what a user names as an adapter into the file to read (``locate``), a model's adapter
into a folder and back and onto the hub (``load_save``: ``save_pretrained`` / ``from_pretrained`` /
``push_to_hub``), and hub ids and the hub cache (``hub``). The names below are the ones the rest of the project
and users import."""

from mm_adapter.pretrained.adapter_folder import CONFIG_NAME, FOLDER_FILES, WEIGHTS_NAME, base_metadata, check_base
from mm_adapter.pretrained.load_save import (
    Loaded, from_pretrained, load_multimodal_adapter, loaded_adapter, push_to_hub, save_pretrained,
)
from mm_adapter.pretrained.locate import adapter_name, locate_adapter, read_pretrained, recorded_format, resolve_adapter

__all__ = ["CONFIG_NAME", "FOLDER_FILES", "WEIGHTS_NAME", "Loaded", "adapter_name", "base_metadata", "check_base",
           "from_pretrained", "load_multimodal_adapter", "loaded_adapter", "locate_adapter", "push_to_hub",
           "read_pretrained", "recorded_format", "resolve_adapter", "save_pretrained"]
