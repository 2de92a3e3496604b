"""Audio files as 16 kHz mono float32 samples, what a Whisper encoder hears.

Decoding is PyAV (``av``): its wheels carry FFmpeg's decoders (WAV/PCM, FLAC, MP3, Vorbis, Opus, AAC in M4A/MP4),
so no system FFmpeg is needed, and FFmpeg's resampler (``swresample``) turns any rate and channel count into
16 kHz mono, as ``whisper.load_audio`` (the ffmpeg command) and faster-whisper's ``decode_audio`` (PyAV) do. What a
file is comes from its bytes (FFmpeg probes a memory buffer that has no name), never from its suffix. A video clip
with a sound track is audio too: its first audio stream is what is heard.

Bounds, each one ``MMAdapterError`` line naming the file: ``MAX_AUDIO_BYTES`` (checked before reading), empty,
not audio (FFmpeg knows no format in it, or it has no audio stream), damage (FFmpeg's errors), truncation (fewer
samples than the container declares), no samples at all, and ``max_seconds`` of sound (declared duration checked
before decoding; decoding stops as soon as it is passed).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np

from mm_adapter.errors import MMAdapterError
from mm_adapter.files.text import regular_file_size

SAMPLE_RATE = 16_000  # what Whisper was trained on
MAX_AUDIO_SECONDS = 30.0  # one Whisper window: the encoder hears at most this much
MAX_AUDIO_BYTES = 20 * 2**20  # as for images and clips: refused before the file is read
AudioInput = str | Path | bytes | None
TRUNCATION_SLACK = 0.05  # seconds a decoder may fall short of the declared duration (codec delay, padding)
_DECODE_ERRORS = (av.FFmpegError, OSError, ValueError, EOFError, MemoryError)
MAGICS = {b"RIFF": "WAV", b"fLaC": "FLAC", b"OggS": "Ogg", b"ID3": "MP3", b"\x1a\x45\xdf\xa3": "WebM/Matroska"}
MAX_RIFF_CHUNKS = 64  # chunks walked before WAV's data chunk (fmt, LIST, fact, ... are a handful)


def audio_kind(data: bytes) -> str | None:
    """The container its first bytes name (for messages: FFmpeg decides what a file is), or None."""
    if data[4:8] == b"ftyp":
        return "MP4/M4A"
    return next((kind for magic, kind in MAGICS.items() if data.startswith(magic)), None)


def wav_shortfall(data: bytes) -> tuple[int, int] | None:
    """(bytes WAV's data chunk declares, bytes present) when the file holds fewer than it declares, else None.

    FFmpeg takes a short WAV's length from the file size, so a cut WAV decodes silently; its RIFF header says what
    should be there. A declared size of 0 or 0xFFFFFFFF (a stream written before its length was known) says nothing.
    """
    if not (data[:4] == b"RIFF" and data[8:12] == b"WAVE"):
        return None
    offset = 12
    for _ in range(MAX_RIFF_CHUNKS):
        if offset + 8 > len(data):
            return None
        chunk, size = data[offset:offset + 4], int.from_bytes(data[offset + 4:offset + 8], "little")
        if chunk == b"data":
            present = len(data) - offset - 8
            return (size, present) if 0 < size < 0xFFFFFFFF and present < size else None
        offset += 8 + size + (size & 1)  # chunks are padded to even sizes
    return None


def audio_bytes(item: str | Path | bytes, name: str | None = None) -> tuple[bytes, str]:
    """The raw bytes of an audio input (a regular file or bytes of at most ``MAX_AUDIO_BYTES``) and its name."""
    if isinstance(item, (bytes, bytearray)):
        name = name or f"<{len(item)} audio bytes>"
        size = len(item)
    else:
        name = name or str(item)
        size = regular_file_size(item, "audio file")  # a FIFO, device or folder is refused before it is opened
    if size > MAX_AUDIO_BYTES:
        raise MMAdapterError(f"{name}: audio file too large ({size / 2**20:.1f} MiB, limit "
                             f"{MAX_AUDIO_BYTES / 2**20:.0f} MiB, MAX_AUDIO_BYTES)")
    if size == 0:
        raise MMAdapterError(f"{name}: the audio file is empty (0 bytes)")
    if isinstance(item, (bytes, bytearray)):
        return bytes(item), name
    try:
        return Path(item).read_bytes(), name
    except OSError as error:
        raise MMAdapterError(f"{name}: cannot read audio file ({error.strerror or error})") from None


def ogg_unfinished(data: bytes) -> bool:
    """Whether an Ogg file stops before its end: its last page is cut, or lacks the end-of-stream flag every Ogg
    writer sets on a stream's last page (Ogg declares no length up front, so a file cut at a page boundary would
    otherwise decode as a shorter, valid one)."""
    if not data.startswith(b"OggS"):
        return False
    last = data.rfind(b"OggS")
    header = data[last:last + 27]
    if len(header) < 27:
        return True
    segments = data[last + 27:last + 27 + header[26]]
    return len(segments) < header[26] or last + 27 + header[26] + sum(segments) > len(data) or not header[5] & 0x04


@contextlib.contextmanager
def _reading(name: str, data: bytes) -> Iterator[None]:
    """FFmpeg's (and PyAV's) failures as one line naming the file."""
    try:
        yield
    except MMAdapterError:
        raise
    except av.InvalidDataError:
        kind = audio_kind(data)
        if kind:  # a known container FFmpeg cannot open: a cut M4A has no moov box, a cut FLAC no readable frames
            raise MMAdapterError(f"{name}: damaged or truncated {kind} audio (FFmpeg cannot read it)") from None
        raise MMAdapterError(f"{name}: not an audio file (FFmpeg recognises no audio format in it)") from None
    except _DECODE_ERRORS as error:
        detail = (str(error).strip().splitlines() or [type(error).__name__])[0][:120]
        kind = audio_kind(data)
        raise MMAdapterError(f"{name}: damaged or truncated {kind + ' ' if kind else ''}audio ({detail})") from None


def has_audio(data: bytes) -> bool:
    """Whether FFmpeg finds an audio stream in ``data`` (a sound file, or a video clip with a sound track)."""
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            return bool(container.streams.audio)
    except _DECODE_ERRORS:
        return False


def _declared_seconds(container: av.container.InputContainer, stream: av.AudioStream) -> float | None:
    """The duration the file's headers declare (the stream's, else the container's), if any."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _too_long(name: str, seconds: float, limit: float) -> MMAdapterError:
    return MMAdapterError(f"{name}: audio too long ({seconds:.1f} s, limit {limit:g} s: one Whisper window, "
                          f"MAX_AUDIO_SECONDS)")


def decode_audio(data: bytes, name: str, max_seconds: float = MAX_AUDIO_SECONDS) -> np.ndarray:
    """The first audio stream of ``data`` as 16 kHz mono float32 samples in [-1, 1] (1-D), within the bounds above."""
    if not data:
        raise MMAdapterError(f"{name}: the audio file is empty (0 bytes)")
    short = wav_shortfall(data)
    if short:
        raise MMAdapterError(f"{name}: damaged or truncated WAV audio ({short[1]:,} of the {short[0]:,} sample bytes "
                             "its header declares)")
    if ogg_unfinished(data):
        raise MMAdapterError(f"{name}: damaged or truncated Ogg audio (its last page is cut or is not the stream's "
                             "end)")
    limit = int(max_seconds * SAMPLE_RATE)
    chunks: list[np.ndarray] = []
    count = 0
    with _reading(name, data), av.open(io.BytesIO(data), mode="r") as container:
        if not container.streams.audio:
            what = "a picture or video, no sound track" if container.streams.video else "no audio stream in it"
            raise MMAdapterError(f"{name}: not an audio file ({what})")
        stream = container.streams.audio[0]
        stream.codec_context.thread_count = 1
        declared = _declared_seconds(container, stream)
        if declared is not None and declared > max_seconds + TRUNCATION_SLACK:
            raise _too_long(name, declared, max_seconds)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        for frame in container.decode(stream):
            for out in [*resampler.resample(frame)]:
                chunks.append(out.to_ndarray().reshape(-1))
                count += chunks[-1].size
            if count > limit + TRUNCATION_SLACK * SAMPLE_RATE:
                raise _too_long(name, count / SAMPLE_RATE, max_seconds)
        for out in resampler.resample(None):  # what the resampler still holds
            chunks.append(out.to_ndarray().reshape(-1))
            count += chunks[-1].size
    if count == 0:
        raise MMAdapterError(f"{name}: the audio has no samples (empty or truncated)")
    seconds = count / SAMPLE_RATE
    if declared is not None and seconds < declared - TRUNCATION_SLACK - 0.02 * declared:
        raise MMAdapterError(f"{name}: damaged or truncated audio ({seconds:.2f} s decoded of the {declared:.2f} s its "
                             "headers declare)")
    samples = np.concatenate(chunks)[:limit].astype(np.float32, copy=False)
    if not np.isfinite(samples).all():
        raise MMAdapterError(f"{name}: damaged audio (samples that are not finite numbers)")
    return samples


def load_audio(item: str | Path | bytes, name: str | None = None, max_seconds: float = MAX_AUDIO_SECONDS
               ) -> np.ndarray:
    """:func:`decode_audio` of a file or bytes, after the size checks of :func:`audio_bytes`."""
    data, name = audio_bytes(item, name)
    return decode_audio(data, name, max_seconds)
