"""An adapter file's audio part: its projection (tensors ``audio.*``), its ``AudioConfig`` (metadata ``audio``), the
features' width (``audio_in_dim``) and the identity of the encoder it was trained with (``audio_encoder``), beside the
visual part and written the same way; a file without them (every file before audio existed) has no audio part.

Loading lays the projection out on the meta device, checks every stored tensor against it, then builds the encoder
(from the recorded spec, or the folder ``--audio-encoder`` points at when the files have moved) and refuses one whose
feature width or weights differ from those it was trained with.
"""

from __future__ import annotations

import torch

from mm_adapter.encoders.audio.config import AudioConfig
from mm_adapter.encoders.audio.whisper import WhisperAudioEncoder, build_audio_encoder
from mm_adapter.encoders.projection import VisualProjection, check_state, part_extras, stored_in_dim
from mm_adapter.errors import MMAdapterError

AUDIO_PREFIX = "audio."  # the audio projection's tensors in an adapter file
AUDIO_KEY = "audio"


def audio_projection(config: AudioConfig, in_dim: int, hidden_size: int,
                     device: torch.device | str | None = None) -> VisualProjection:
    """The trainable map from audio features to the prompt offset: the visual path's projection, with the audio
    config's options."""
    return VisualProjection(in_dim, hidden_size, config.projection_config(), device=device)


def audio_extras(config: AudioConfig, projection: VisualProjection,
                 encoder: WhisperAudioEncoder | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``extra_tensors`` / ``extra_metadata`` for ``adapter_file.save_adapter``: the projection and config."""
    return part_extras(AUDIO_KEY, config, projection, encoder)


def has_audio_part(adapter_file) -> bool:
    return AUDIO_KEY in adapter_file.extra_metadata


def audio_projection_from_adapter(adapter_file, hidden_size: int | None = None, device: torch.device | str | None = None
                                  ) -> tuple[AudioConfig, VisualProjection] | None:
    """The audio config and loaded projection stored in an ``AdapterFile``, or None for one without sound; sizes come
    from the stored tensors, each checked against the layout the config gives."""
    meta = adapter_file.extra_metadata
    if AUDIO_KEY not in meta:
        return None
    where = adapter_file.path
    config = AudioConfig.from_json(meta[AUDIO_KEY], source=str(where))
    state = {k[len(AUDIO_PREFIX):]: v for k, v in adapter_file.extra_tensors.items() if k.startswith(AUDIO_PREFIX)}
    in_dim = stored_in_dim(where, meta, state, AUDIO_PREFIX)
    projection = audio_projection(config, in_dim, hidden_size or adapter_file.base.hidden_size, device="meta")
    check_state(where, projection.state_dict(), state, AUDIO_PREFIX)
    projection.load_state_dict(state, assign=True)
    return config, projection.to(device or "cpu", torch.float32)


def check_audio_encoder(adapter_file, encoder: WhisperAudioEncoder, projection: VisualProjection) -> None:
    """Refuse an encoder whose features do not fit the projection, or another encoder than it was trained with."""
    if encoder.feature_dim != projection.in_dim:
        raise MMAdapterError(f"{adapter_file.path}: its audio projection takes {projection.in_dim} features, but the "
                             f"audio encoder {encoder.source.spec} at depths {encoder.depths} gives "
                             f"{encoder.feature_dim}")
    expected = adapter_file.extra_metadata.get("audio_encoder")
    if expected and expected != encoder.identity:
        raise MMAdapterError(f"{adapter_file.path}: trained with audio encoder {expected}, but "
                             f"{encoder.source.spec} is {encoder.identity} (other weights or depths)")


def load_audio_part(adapter_file, device: torch.device | str = "cpu", encoder_spec: str | None = None
                    ) -> tuple[WhisperAudioEncoder, VisualProjection] | None:
    """The frozen encoder and projection of an adapter's audio part (None without one); ``encoder_spec`` replaces
    the recorded encoder location (its weights must still be those the adapter was trained with)."""
    found = audio_projection_from_adapter(adapter_file, device=device)
    if found is None:
        return None
    config, projection = found
    if encoder_spec:
        config = AudioConfig(**{**config.to_dict(), "audio_encoder": encoder_spec})
    encoder = build_audio_encoder(config, device)
    check_audio_encoder(adapter_file, encoder, projection)
    return encoder, projection.requires_grad_(False).eval()
