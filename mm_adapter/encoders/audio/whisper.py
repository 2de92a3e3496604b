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
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mm_adapter.encoders.audio.config import AudioConfig
from mm_adapter.encoders.audio.ct2 import ct2_config, read_ct2_whisper
from mm_adapter.encoders.audio.decode import MAX_AUDIO_SECONDS, SAMPLE_RATE
from mm_adapter.encoders.audio.source import WhisperSource, resolve_source
from mm_adapter.encoders.clip import resolve_depths, weights_fingerprint
from mm_adapter.errors import MMAdapterError
from mm_adapter.files.text import read_bytes

FEATURE_VERSION = 1  # bump when the feature recipe changes: it is part of the cache key
SAMPLES_PER_FRAME = 320  # hop 160 samples, then conv2's stride 2: 50 encoder frames a second
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
