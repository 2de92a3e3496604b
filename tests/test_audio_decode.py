"""Audio files through PyAV: every container and codec the issue names, at odd rates and channel counts, comes out as
16 kHz mono of the right length and pitch; what a file is comes from its bytes; every bad file is one line naming it."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image
from tiny_audio import FORMATS, encode_audio

import mm_adapter.encoders.audio.decode as decode_module
from mm_adapter.encoders.audio.decode import SAMPLE_RATE, decode_audio, has_audio, load_audio
from mm_adapter.errors import MMAdapterError

# (rate, channels): Opus only takes its own rates, so Ogg gets 8/12/24/48 kHz
RATES = {"wav": [(44_100, 2), (22_050, 1), (11_025, 3)], "flac": [(44_100, 2), (32_000, 1)],
         "mp3": [(44_100, 2), (22_050, 1)], "ogg": [(48_000, 2), (12_000, 1)], "m4a": [(44_100, 2), (8_000, 1)]}
CASES = [(kind, rate, channels) for kind, rates in RATES.items() for rate, channels in rates]


def pitch(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * SAMPLE_RATE / len(samples))


@pytest.mark.parametrize("kind, rate, channels", CASES, ids=[f"{k}-{r}-{c}ch" for k, r, c in CASES])
def test_every_format_rate_and_channel_count_becomes_16k_mono_of_the_same_length_and_pitch(kind, rate, channels):
    """A 1.5 s 440 Hz tone decodes to 1.5 s of 16 kHz mono (AAC's priming may add a few ms) at 440 Hz: the rate was
    converted, not reinterpreted (a 44.1 kHz file read as 16 kHz would sound at 1213 Hz), and all channels mixed."""
    samples = decode_audio(encode_audio(kind, 1.5, rate, channels, freq=440.0), f"tone.{kind}")
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert abs(len(samples) - 1.5 * SAMPLE_RATE) <= 0.04 * SAMPLE_RATE
    assert abs(pitch(samples) - 440.0) < 5
    assert 0.3 < np.abs(samples).max() <= 1.0


def test_what_a_file_is_comes_from_its_bytes_never_its_name(tmp_path):
    """A FLAC named .mp3 and an M4A named .wav decode; a PNG named .wav is refused as not audio; a video clip with a
    sound track is audio (its track), one without is not."""
    flac, m4a = tmp_path / "song.mp3", tmp_path / "voice.wav"
    flac.write_bytes(encode_audio("flac", 1.0, 44_100, 2))
    m4a.write_bytes(encode_audio("m4a", 1.0, 22_050, 1))
    assert len(load_audio(flac)) == SAMPLE_RATE and abs(len(load_audio(m4a)) - SAMPLE_RATE) < 0.04 * SAMPLE_RATE
    picture = io.BytesIO()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(picture, "PNG")
    (tmp_path / "fake.wav").write_bytes(picture.getvalue())
    with pytest.raises(MMAdapterError, match=r"fake\.wav: not an audio file \(a picture or video, no sound track\)$"):
        load_audio(tmp_path / "fake.wav")
    assert has_audio(encode_audio("wav")) and not has_audio(picture.getvalue()) and not has_audio(b"text")


def cut(kind: str, fraction: float) -> bytes:
    data = encode_audio(kind, 2.0, 48_000 if kind == "ogg" else 44_100, 2)
    return data[: int(len(data) * fraction)]


BAD = {
    "empty": (lambda: b"", "the audio file is empty"),
    "text": (lambda: b"hello, this is not a sound\n" * 40, "not an audio file"),
    "zeros": (lambda: bytes(4096), "not an audio file"),
    **{f"{kind} cut at {int(f * 100)}%": (lambda kind=kind, f=f: cut(kind, f), "damaged or truncated")
       for kind in FORMATS for f in (0.5, 0.9)},
    "wav header only": (lambda: encode_audio("wav")[:44], "damaged or truncated|no samples"),
    "too long flac": (lambda: encode_audio("flac", 31.0), r"audio too long \(31\.0 s, limit 30 s"),
    "too long mp3": (lambda: encode_audio("mp3", 45.0), "audio too long"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_audio_is_one_line_naming_the_file(case):
    """Empty, not audio, truncated in each container (WAV's header, FLAC's and M4A's structure, MP3's declared
    length, Ogg's end-of-stream page) and over the duration bound: one line starting with the file's name."""
    make, pattern = BAD[case]
    with pytest.raises(MMAdapterError) as caught:
        decode_audio(make(), "clip.bin")
    message = str(caught.value)
    assert message.startswith("clip.bin: ") and "\n" not in message
    assert __import__("re").search(pattern, message), message


def test_size_bound_and_special_files_are_refused_before_reading(tmp_path, monkeypatch):
    """Over MAX_AUDIO_BYTES, a folder and a FIFO are refused from their stat (a FIFO would block the reader)."""
    path = tmp_path / "big.flac"
    path.write_bytes(encode_audio("flac", 1.0))
    monkeypatch.setattr(decode_module, "MAX_AUDIO_BYTES", 1000)
    with pytest.raises(MMAdapterError, match=r"big\.flac: audio file too large .* MAX_AUDIO_BYTES"):
        load_audio(path)
    with pytest.raises(MMAdapterError, match="too large"):
        load_audio(path.read_bytes(), "upload")
    os.mkfifo(tmp_path / "pipe.wav")
    with pytest.raises(MMAdapterError, match=r"pipe\.wav: is .*FIFO"):
        load_audio(tmp_path / "pipe.wav")
    with pytest.raises(MMAdapterError, match="folder"):
        load_audio(tmp_path)
