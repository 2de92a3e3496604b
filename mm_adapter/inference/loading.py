"""The one loader of a model with any method's adapter on it: what evaluation, the demo and generation call."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from mm_adapter.encoders.audio.adapter_part import has_audio_part, load_audio_part
from mm_adapter.errors import MMAdapterError
from mm_adapter.methods.config import FULL, LLAMA_ADAPTER, LLAMA_ADAPTER_V2, OUR_METHODS, PEFT_METHODS
from mm_adapter.methods.folders import BASE_IDENTITY_ATTR, load_peft_folder
from mm_adapter.model.adapter import adapter_v2_config
from mm_adapter.model.adapter_file import BaseIdentity
from mm_adapter.model.base import load_base
from mm_adapter.pretrained import load_multimodal_adapter, read_pretrained


def identity_of(model: nn.Module) -> BaseIdentity:
    """The identity of the base beneath a model :func:`load_answering` returned (PEFT's layers hide it)."""
    return getattr(model, BASE_IDENTITY_ATTR, None) or BaseIdentity.of(model)


def answering_method(model: nn.Module, method: str) -> str:
    """The method of what :func:`load_answering` loaded: ``locate_adapter`` calls every file of ours llama-adapter,
    and a V2 file is known only once it is on the model (its metadata says so)."""
    return LLAMA_ADAPTER_V2 if method == LLAMA_ADAPTER and adapter_v2_config(model) is not None else method


def load_answering(base: str, method: str, adapter: Path | None, device, dtype: str | None = None,
                   say: Callable[[str], None] = print):
    """``(model, tokenizer, visual)``: the base with ``adapter`` of ``method`` on it, on ``device``; the only place
    evaluation, the demo and generation load a model. ``adapter`` is what ``pretrained.locate_adapter`` found: our
    file (``visual`` is its encoder and projection when it has them, else None) or a method's folder; a full
    fine-tune's folder is loaded as the base instead of ``base``."""
    if method == FULL:
        say(f"note: {adapter} is a full fine-tune; it is loaded as the base instead of {base}")
    model, tokenizer = load_base(str(adapter) if method == FULL else base, dtype=dtype)
    model.to(device)
    visual = None
    if adapter is not None and method in OUR_METHODS:
        visual = load_multimodal_adapter(model, adapter, device)
    elif method in PEFT_METHODS:
        model = load_peft_folder(model, adapter)
    return model, tokenizer, visual


def load_hearing(method: str, adapter: Path | None, device, encoder_spec: str | None = None):
    """``(audio encoder, audio projection)`` of our adapter file trained with sound, else None; ``encoder_spec``: where
    its Whisper encoder is now, when it moved (its weights must be the same). A spec given for an adapter without
    sound is refused: the user expects it to be heard."""
    found = read_pretrained(adapter) if adapter is not None and method in OUR_METHODS else None
    if found is None or not has_audio_part(found):
        if encoder_spec:
            raise MMAdapterError(f"--audio-encoder {encoder_spec}: {adapter or 'no adapter'} has no audio part (it was "
                                 "not trained with --audio), so there is nothing to hear with it")
        return None
    return load_audio_part(found, device, encoder_spec)
