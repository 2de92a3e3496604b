"""Audio files made in the test (PyAV's own encoders, sine tones from numpy), and a tiny random Whisper encoder saved
as a transformers folder: what the audio tests hear, with nothing downloaded."""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# container format, codec, sample format of the codec's input, file suffix
FORMATS = {"wav": ("wav", "pcm_s16le", "s16", ".wav"), "flac": ("flac", "flac", "s16", ".flac"),
           "mp3": ("mp3", "libmp3lame", "s16p", ".mp3"), "ogg": ("ogg", "libopus", "s16", ".ogg"),
           "m4a": ("ipod", "aac", "fltp", ".m4a")}


def tone(seconds: float = 1.0, rate: int = 16_000, channels: int = 1, freq: float = 440.0) -> np.ndarray:
    """(channels, samples) float32 sine at ``freq`` Hz, each channel a little quieter than the one before."""
    t = np.arange(int(seconds * rate)) / rate
    return np.stack([0.5 / (c + 1) * np.sin(2 * np.pi * freq * t) for c in range(channels)]).astype(np.float32)


def encode_audio(kind: str = "wav", seconds: float = 1.0, rate: int = 16_000, channels: int = 1,
                 freq: float = 440.0) -> bytes:
    """The bytes of a sine tone as a ``kind`` file (wav, flac, mp3, ogg: Opus, m4a: AAC)."""
    container_format, codec, sample_format, _ = FORMATS[kind]
    samples = tone(seconds, rate, channels, freq)
    buffer = io.BytesIO()
    layout = {1: "mono", 2: "stereo"}.get(channels, f"{channels}c")
    with av.open(buffer, mode="w", format=container_format) as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        stream.time_base = Fraction(1, rate)
        block = 1024
        for start in range(0, samples.shape[1], block):
            part = samples[:, start:start + block]
            if sample_format.startswith("s16"):
                part = (part * 32767).astype(np.int16)
            array = part if sample_format.endswith("p") else part.T.reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(array), format=sample_format, layout=layout)
            frame.sample_rate, frame.pts = rate, start
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def write_audio(path: str | Path, kind: str | None = None, **tone_args) -> Path:
    """``encode_audio`` written to ``path`` (the kind from its suffix unless given)."""
    path = Path(path)
    kind = kind or next(k for k, spec in FORMATS.items() if spec[3] == path.suffix)
    path.write_bytes(encode_audio(kind, **tone_args))
    return path
