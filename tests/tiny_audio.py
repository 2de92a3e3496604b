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


def tiny_whisper_folder(folder: str | Path, seed: int = 0, layers: int = 2, width: int = 64) -> Path:
    """A random Whisper (encoder and decoder) saved by transformers' own ``save_pretrained``, as a user's folder is."""
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig(vocab_size=64, num_mel_bins=80, d_model=width, encoder_layers=layers, decoder_layers=1,
                           encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=96,
                           decoder_ffn_dim=96, max_source_positions=1500, max_target_positions=32,
                           pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=3,
                           begin_suppress_tokens=None, suppress_tokens=None)
    torch.manual_seed(seed)
    WhisperForConditionalGeneration(config).save_pretrained(folder)
    return Path(folder)


def write_ct2(path: str | Path, spec: str, variables: dict, aliases: dict | None = None, version: int = 6) -> Path:
    """A CTranslate2 ``model.bin`` in its binary layout (as ``specs/model_spec.py`` writes it), from numpy arrays."""
    import struct

    dtypes = {np.dtype("float32"): 0, np.dtype("int8"): 1, np.dtype("int16"): 2, np.dtype("int32"): 3,
              np.dtype("float16"): 4}

    def string(text: str) -> bytes:
        return struct.pack("<H", len(text) + 1) + text.encode() + b"\0"

    out = struct.pack("<I", version) + string(spec) + struct.pack("<II", 1, len(variables))
    for name, array in variables.items():
        array = np.ascontiguousarray(array)
        out += string(name) + struct.pack("<B", array.ndim) + struct.pack(f"<{array.ndim}I", *array.shape)
        out += struct.pack("<BI", dtypes[array.dtype], array.nbytes) + array.tobytes()
    out += struct.pack("<I", len(aliases or {}))
    for alias, target in (aliases or {}).items():
        out += string(alias) + string(target)
    Path(path).write_bytes(out)
    return Path(path)


def ct2_variables(encoder, dtype=np.float16) -> dict:
    """A transformers WhisperEncoder's weights named and laid out as CTranslate2's Whisper converter stores them."""
    state = {k: v.detach().numpy() for k, v in encoder.state_dict().items()}
    out = {"encoder/conv1/weight": state["conv1.weight"], "encoder/conv1/bias": state["conv1.bias"],
           "encoder/conv2/weight": state["conv2.weight"], "encoder/conv2/bias": state["conv2.bias"],
           "encoder/position_encodings/encodings": state["embed_positions.weight"],
           "encoder/layer_norm/gamma": state["layer_norm.weight"], "encoder/layer_norm/beta": state["layer_norm.bias"]}
    for i in range(len(encoder.layers)):
        a, b = f"layers.{i}.", f"encoder/layer_{i}/"
        q, k, v = (state[f"{a}self_attn.{x}_proj.weight"] for x in "qkv")
        out[f"{b}self_attention/linear_0/weight"] = np.concatenate([q, k, v])
        out[f"{b}self_attention/linear_0/bias"] = np.concatenate(
            [state[f"{a}self_attn.q_proj.bias"], np.zeros_like(state[f"{a}self_attn.q_proj.bias"]),
             state[f"{a}self_attn.v_proj.bias"]])
        for theirs, ours in (("self_attention/linear_1", "self_attn.out_proj"), ("ffn/linear_0", "fc1"),
                             ("ffn/linear_1", "fc2")):
            out[f"{b}{theirs}/weight"], out[f"{b}{theirs}/bias"] = state[f"{a}{ours}.weight"], state[f"{a}{ours}.bias"]
        for theirs, ours in (("self_attention/layer_norm", "self_attn_layer_norm"),
                             ("ffn/layer_norm", "final_layer_norm")):
            out[f"{b}{theirs}/gamma"], out[f"{b}{theirs}/beta"] = state[f"{a}{ours}.weight"], state[f"{a}{ours}.bias"]
    out = {k: v.astype(dtype) for k, v in out.items()}
    out["encoder/num_heads"] = np.array(encoder.config.encoder_attention_heads, dtype=np.int16)
    out["decoder/embeddings/weight"] = np.zeros((8, encoder.config.d_model), dtype=dtype)
    return dict(sorted(out.items()))


AUDIO_CODECS = {"mp4": ("aac", "fltp"), "webm": ("libopus", "s16")}  # the sound track's codec in each container


def clip_with_sound(colours: list, freq: float = 440.0, container: str = "mp4", seconds: float = 1.0,
                    rate: int = 48_000, size: int = 32) -> bytes:
    """A video clip (H.264 in MP4, VP9 in WebM: ``clips.video``'s frames, 10 a second) with a sine tone as its sound
    track (AAC, Opus), muxed by PyAV as a camera's file is: one file that carries both a picture and a sound."""
    from clips import CODECS, frames_of

    codec, sample_format = AUDIO_CODECS[container]
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as output:
        picture = output.add_stream(CODECS[container], rate=10)
        picture.width = picture.height = size
        picture.pix_fmt = "yuv420p"
        sound = output.add_stream(codec, rate=rate, layout="mono")
        for frame in frames_of(colours, size):
            output.mux(picture.encode(av.VideoFrame.from_ndarray(np.asarray(frame), format="rgb24")))
        output.mux(picture.encode())
        samples = tone(seconds, rate, 1, freq)
        for start in range(0, samples.shape[1], 960):
            part = samples[:, start:start + 960]
            part = (part * 32767).astype(np.int16) if sample_format == "s16" else part
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(part), format=sample_format, layout="mono")
            frame.sample_rate, frame.pts = rate, start
            output.mux(sound.encode(frame))
        output.mux(sound.encode(None))
    return buffer.getvalue()
