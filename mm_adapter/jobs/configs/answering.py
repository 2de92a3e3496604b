"""The configs of the commands that answer a person with a trained adapter: generate (instructions, streamed), demo
(one multiple-choice question about an image, clip or sound) and serve (the demo as a local web page). All three
default to fp32 so an answer does not depend on the device's bf16 support."""

from __future__ import annotations

from dataclasses import dataclass, field

from mm_adapter.eval.config import FORMATS
from mm_adapter.fields import check, option
from mm_adapter.inference.config import SamplingConfig
from mm_adapter.model.config import ModelOptions


@dataclass
class GenerateConfig:
    """Answer an Alpaca-style instruction with the base and one of several adapters, streamed."""

    adapter: list[str] = option(default_factory=list, nargs="*")
    """adapters: our .safetensors files, adapter folders, training run folders or hub ids org/name[@revision]; all
    are read and checked against the base up front"""
    use: str | None = None
    """which adapter to apply (a run's adapter: RUN/best or RUN/adapter; else the file name without .safetensors,
    the folder name, or the hub repo name); needed with several"""
    instruction: str | None = None
    """omit for an interactive session (one instruction per line; ':use NAME' switches adapter)"""
    input: str = ""
    """optional input/context for the instruction"""
    bf16: bool = False
    """bf16 autocast; off by default so an answer does not depend on the device's bf16 support (training's default
    is on; the precision used is printed at the start)"""
    seed: int = 0
    """sampling seed"""
    model: ModelOptions = field(default_factory=ModelOptions)
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=256))

    def __post_init__(self) -> None:
        check(self, "seed", low=0, integer=True)


@dataclass
class DemoConfig:
    """Answer one multiple-choice question about an image: the chosen option and every option's probability."""

    question: str
    """the question"""
    choices: list[str] = option(default_factory=list, nargs="+", metavar="CHOICE")
    """two or more options"""
    image: str | None = option(None, alias="--video")
    """image file (PNG, JPEG, ...) or video clip (GIF, MP4, WebM: the adapter's frames are sampled from it); omit
    for a text-only question"""
    audio: str | None = option(None, metavar="FILE")
    """sound file (WAV, FLAC, MP3, OGG/Opus, M4A, or a clip's sound track; at most 30 s) for an adapter trained with
    sound; a video clip given as --video with a sound track is heard without it"""
    context: str = ""
    """optional hint text shown with the question"""
    adapter: str | None = None
    """adapter: our .safetensors file, an adapter folder (adapter_config.json + adapter_model.safetensors), a
    training run's folder or a hub id org/name[@revision]; one trained with images uses the image"""
    audio_encoder: str | None = None
    """with an adapter trained with sound: where its Whisper encoder is now, when not where training found it"""
    format: str | None = option(None, choices=FORMATS)
    """prompt format (None: the one the adapter file records, else QCM-A)"""
    bf16: bool = False
    """bf16 autocast; off by default so an answer does not depend on the device's bf16 support (training's default
    is on; the precision used is printed at the start)"""
    model: ModelOptions = field(default_factory=ModelOptions)


@dataclass
class ServeConfig:
    """The demo as a local web page: upload an image or clip and/or a sound (or record one from the microphone),
    type a question and options, see the answer."""

    adapter: str | None = None
    """adapter: our .safetensors file, an adapter folder (adapter_config.json + adapter_model.safetensors), a
    training run's folder or a hub id org/name[@revision]; one trained with images uses the image, one trained with
    sound hears the sound"""
    audio_encoder: str | None = None
    """with an adapter trained with sound: where its Whisper encoder is now, when not where training found it"""
    format: str | None = option(None, choices=FORMATS)
    """prompt format (None: the one the adapter file records, else QCM-A)"""
    host: str = "127.0.0.1"
    """address to listen on (127.0.0.1: this machine only)"""
    port: int = 8000
    """port (0: any free port)"""
    timeout: float = 60.0
    """seconds a client may stay silent while sending its request; then it is answered 408 or dropped"""
    bf16: bool = False
    """bf16 autocast; off by default so an answer does not depend on the device's bf16 support (training's default
    is on; the precision used is printed at the start)"""
    model: ModelOptions = field(default_factory=ModelOptions)

    def __post_init__(self) -> None:
        check(self, "port", low=0, high=65535, integer=True)
        check(self, "timeout", low=0, low_open=True)
