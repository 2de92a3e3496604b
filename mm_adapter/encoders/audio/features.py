"""Audio features cached on disk like image features (``feature_cache.FeatureCache``: one ``.npy`` per sound under
the encoder's identity, keyed by the sha256 of the file's bytes), so epochs after the first never run Whisper.

Bad sounds (missing, not a regular file, over the size or duration bound, not audio, truncated) raise one
``MMAdapterError`` line naming the file, or with ``on_error="skip"`` are logged and treated as "no sound".
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

import torch

from mm_adapter.encoders.audio.decode import AudioInput, audio_bytes, decode_audio
from mm_adapter.encoders.audio.whisper import WhisperAudioEncoder
from mm_adapter.encoders.feature_cache import FeatureCache, ImageFeatures
from mm_adapter.errors import MMAdapterError

log = logging.getLogger(__name__)


def _skip(error: MMAdapterError, on_error: str, skipped: list[str]) -> None:
    """A bad sound: raised (``on_error="raise"``), else logged and listed, its problem kept as one without sound."""
    if on_error == "raise":
        raise error
    log.warning("skipping sound: %s", error)
    skipped.append(str(error))


def audio_features(encoder: WhisperAudioEncoder, sounds: Sequence[AudioInput], cache: FeatureCache | None | bool = True,
                   on_error: str = "raise", batch_size: int = 8, names: Sequence[str | None] | None = None
                   ) -> ImageFeatures:
    """(batch, feature_dim) features of ``sounds`` (paths, bytes or None) and their mask, from the cache where
    present, else the encoder ``batch_size`` sounds per forward; identical sounds in one call are encoded once."""
    if on_error not in ("raise", "skip"):
        raise MMAdapterError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    cache = FeatureCache(encoder) if cache is True else cache
    skipped: list[str] = []
    found: dict[str, torch.Tensor] = {}
    rows: dict[int, str] = {}
    pending: dict[str, tuple[bytes, str]] = {}
    for row, item in enumerate(sounds):
        if item is None:
            continue
        try:
            data, name = audio_bytes(item, names[row] if names else None)
        except MMAdapterError as error:
            _skip(error, on_error, skipped)
            continue
        rows[row] = key = hashlib.sha256(data).hexdigest()
        hit = cache.get(key) if cache else None
        if hit is not None:
            cache.hits += 1
            found[key] = hit
        elif key not in found:
            pending.setdefault(key, (data, name))
    batch: list[tuple[str, object]] = []

    def flush() -> None:
        for (key, _), vector in zip(batch, encoder(*encoder.log_mel([wave for _, wave in batch])).cpu(), strict=True):
            found[key] = vector
            if cache:
                cache.put(key, vector)
        batch.clear()

    for key, (data, name) in pending.items():
        try:
            wave = decode_audio(data, name, encoder.max_seconds)
        except MMAdapterError as error:
            _skip(error, on_error, skipped)
            continue
        if cache:
            cache.misses += 1
        batch.append((key, wave))
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    features = torch.zeros(len(sounds), encoder.feature_dim)
    mask = torch.zeros(len(sounds), dtype=torch.bool)
    for row, key in rows.items():
        if key in found:
            features[row], mask[row] = found[key], True
    return ImageFeatures(features, mask, skipped)
