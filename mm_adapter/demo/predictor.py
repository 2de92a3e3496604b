"""One image-plus-question answer with option probabilities: what the demo CLI and web page call.

The question is put in the ScienceQA prompt the adapter was trained on (``build_prompt``) and
answered by score mode as the format states answers (``choice_scores``: option letters, or option texts for QCM-T). With an adapter that has visual parts,
the image goes through its frozen encoder and projection and is added to every adaption prompt
(``prompt_offset``); otherwise the image is only checked and the prediction says it was ignored.
The image may be a video clip (GIF, MP4, WebM): it gives the adapter's ``frames`` sampled frames.

Bad input (a choice list that is too short, an image that is not one, too large, truncated,
missing or not a regular file, a question, context or option over ``MAX_TEXT_CHARS`` characters,
or a prompt longer than the model's context) raises one ``MMAdapterError`` line, so callers can
show it and carry on. Characters are checked before tokenising, tokens before the forward.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from mm_adapter.demo.question import check_question
from mm_adapter.encoders.audio.decode import AudioInput, audio_bytes, decode_audio, has_audio
from mm_adapter.encoders.audio.features import audio_features
from mm_adapter.encoders.audio.whisper import WhisperAudioEncoder
from mm_adapter.encoders.clip import ClipEncoder
from mm_adapter.encoders.feature_cache import ImageInput, decode_media, image_bytes, image_features
from mm_adapter.encoders.projection import VisualProjection, frames_note
from mm_adapter.encoders.video import looks_like_video
from mm_adapter.errors import MMAdapterError
from mm_adapter.eval.run import resolve_format
from mm_adapter.inference.loading import load_answering, load_hearing
from mm_adapter.inference.precision import precision
from mm_adapter.inference.scoring import check_context, choice_scores, tokens_needed
from mm_adapter.methods.config import LLAMA_ADAPTER
from mm_adapter.methods.virtual_tokens import context_tokens
from mm_adapter.model.base import DEFAULT_SPEC
from mm_adapter.pretrained import adapter_name, locate_adapter
from mm_adapter.scienceqa.data import Problem
from mm_adapter.scienceqa.prompts import PromptFormat, build_prompt, option_letters


@dataclass(frozen=True)
class Prediction:
    """The chosen option and the probability of each option (in the given order, summing to 1)."""

    choice_index: int
    letter: str
    text: str
    probabilities: list[float]
    choices: tuple[str, ...]
    image_used: bool
    note: str | None = None  # why an image was not used, or that there was none
    audio_used: bool = False  # a sound (or a clip's sound track) was heard through the adapter's audio part

    def to_dict(self) -> dict:
        return {"choice_index": self.choice_index, "letter": self.letter, "text": self.text,
                "image_used": self.image_used, "audio_used": self.audio_used, "note": self.note,
                "options": [{"letter": letter, "text": text, "probability": p}
                            for letter, text, p in zip(option_letters(len(self.choices)), self.choices,
                                                       self.probabilities)]}


def check_image(image: ImageInput, name: str | None = None) -> None:
    """Refuse an image or clip that is empty, over ``MAX_IMAGE_BYTES``, not a regular file, or that cannot be fully
    decoded (PIL for images; a clip is decoded to its end: damage, no frames, over ``MAX_CLIP_FRAMES``)."""
    if image is None:
        return
    default = "uploaded image" if isinstance(image, (bytes, bytearray)) else None
    data, label = image_bytes(image, name or default)  # refuses folders, FIFOs, devices and files over the limit
    if not data:
        raise MMAdapterError(f"{label}: the {'clip' if looks_like_video(label) else 'image'} is empty (0 bytes)")
    decode_media(data, label)  # one line for not-an-image, truncated, over PIL's pixel limit, a bad clip


@dataclass
class VisualPath:
    """The frozen encoder and trained projection of a multimodal adapter."""

    encoder: ClipEncoder
    projection: VisualProjection

    @torch.no_grad()
    def offset(self, image: ImageInput, name: str | None) -> torch.Tensor:
        """(1, hidden) prompt offset for one image (not cached on disk: uploads leave no trace)."""
        config = self.encoder.config
        found = image_features(self.encoder, [image], cache=False, names=[name], frames=config.frames,
                               order=config.frame_order)
        device = next(self.projection.parameters()).device
        return self.projection(found.features.to(device), found.mask.to(device))


def check_audio(audio: AudioInput, name: str | None = None) -> None:
    """Refuse a sound that is empty, over the size or duration bound, not a regular file, not audio or truncated."""
    if audio is None:
        return
    data, label = audio_bytes(audio, name or ("uploaded audio" if isinstance(audio, (bytes, bytearray)) else None))
    decode_audio(data, label)


@dataclass
class AudioPath:
    """The frozen Whisper encoder and trained projection of an adapter trained with sound."""

    encoder: WhisperAudioEncoder
    projection: VisualProjection

    @torch.no_grad()
    def offset(self, audio: AudioInput, name: str | None) -> torch.Tensor:
        """(1, hidden) prompt offset for one sound (not cached on disk: uploads leave no trace)."""
        found = audio_features(self.encoder, [audio], cache=False, names=[name])
        device = next(self.projection.parameters()).device
        return self.projection(found.features.to(device), found.mask.to(device))


def load_model(base: str, adapter: str | Path | None, device: torch.device | str, dtype: str | None = None,
               method: str = LLAMA_ADAPTER, audio_encoder: str | None = None):
    """The base (frozen, on ``device``), with the adapter of ``method`` applied and its visual and audio paths if it
    has them: ``(model, tokenizer, VisualPath | None, AudioPath | None)``.

    The only place the demo loads models, so a change in how adapters are loaded lands here once.
    """
    path = None if adapter is None else Path(adapter)
    hearing = load_hearing(method, path, device, audio_encoder)
    model, tokenizer, found = load_answering(base, method, path, device, dtype,
                                             say=lambda line: print(line, file=sys.stderr))
    return (model, tokenizer, VisualPath(*found) if found is not None else None,
            AudioPath(*hearing) if hearing is not None else None)


@dataclass
class Predictor:
    """A loaded model answering one question at a time; ``predict`` is safe to call from threads."""

    model: torch.nn.Module
    tokenizer: object
    visual: VisualPath | None = None
    adapter_name: str | None = None
    base_name: str = DEFAULT_SPEC
    fmt: PromptFormat = PromptFormat.QCM_A
    bf16: bool = False  # bf16 autocast
    hearing: AudioPath | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def load(cls, base: str = DEFAULT_SPEC, adapter: str | Path | None = None, device: torch.device | str = "cpu",
             fmt: str | PromptFormat | None = None, dtype: str | None = None, bf16: bool = False,
             audio_encoder: str | None = None) -> "Predictor":
        """``adapter``: our file, an adapter folder (of any training method) or a hub id; ``fmt``: the prompt format,
        by default the one the adapter records (else QCM-A); ``audio_encoder``: where an audio adapter's Whisper
        encoder is now, when it moved."""
        say = lambda line: print(line, file=sys.stderr)  # noqa: E731  (which adapter of a run folder was taken)
        method, found = locate_adapter(adapter, say=say) if adapter else (LLAMA_ADAPTER, None)
        fmt = resolve_format(fmt, found, warn=lambda line: print(line, file=sys.stderr))
        model, tokenizer, visual, hearing = load_model(base, found, device, dtype, method, audio_encoder)
        return cls(model, tokenizer, visual, adapter_name(adapter) if adapter else None, base, PromptFormat.parse(fmt),
                   bf16, hearing)

    def describe(self) -> str:
        """One line: what answers the questions (shown by the CLI and the web page)."""
        text = f"base {self.base_name}"
        text += f", adapter {self.adapter_name}" if self.adapter_name else ", no adapter"
        if self.hearing is not None:
            text += f", audio: {self.hearing.encoder.describe()}"
        if self.visual is None:
            return text + " (text only: images are ignored)" if self.hearing is None else text
        encoder = self.visual.encoder
        weights = "random weights" if encoder.random_weights else f"weights {encoder.config.clip_pretrained}"
        return text + f", image encoder {encoder.config.clip_model} ({weights}){frames_note(encoder.config)}"

    def _ignored_note(self) -> str:
        if self.adapter_name is None:
            return "image ignored: no adapter loaded, the base model answers from the text alone"
        return f"image ignored: adapter {self.adapter_name} has no visual parts (a text-only adapter)"

    def _sound(self, image: ImageInput, audio: AudioInput, image_name: str | None) -> tuple[AudioInput, str | None]:
        """What is heard: the sound given, else a clip's own sound track (a clip with sound carries both)."""
        if audio is not None or image is None or self.hearing is None:
            return audio, None
        data, label = image_bytes(image, image_name)
        return (data, f"{label} (sound track)") if has_audio(data) else (None, None)

    def predict(self, image: ImageInput, question: str, choices: Sequence[str], context: str = "",
                image_name: str | None = None, audio: AudioInput = None, audio_name: str | None = None) -> Prediction:
        """Answer ``question`` about ``image`` and ``audio`` (paths, bytes, or None) with one of ``choices``."""
        question, choices = check_question(question, choices, context)
        check_image(image, image_name)
        check_audio(audio, audio_name)
        sound, track = self._sound(image, audio, image_name)
        problem = Problem("demo", question, choices, 0, hint=(context or "").strip(),
                          image=None if image is None else "upload")
        prompt = build_prompt(problem, self.fmt).prompt
        needed = tokens_needed(self.tokenizer, [prompt], [choices], self.fmt)
        check_context(needed, context_tokens(self.model), ["the question"])
        use_image = image is not None and self.visual is not None
        use_sound = sound is not None and self.hearing is not None
        with self._lock:  # prompt_offset sets state on the shared model: one forward at a time
            offsets = self.visual.offset(image, image_name) if use_image else None
            if use_sound:
                heard = self.hearing.offset(sound, track or audio_name)
                offsets = heard if offsets is None else offsets + heard
            with precision(self.model, self.bf16):
                scores = choice_scores(self.model, self.tokenizer, [prompt], [choices], self.fmt, offsets)
        probabilities = torch.softmax(scores[0], dim=-1).tolist()
        best = max(range(len(choices)), key=probabilities.__getitem__)
        if image is None:
            note = "no image given: answered from the text alone" if sound is None else None
        else:
            note = None if use_image else self._ignored_note()
        if audio is not None and not use_sound:
            note = (f"{note}; " if note else "") + "sound ignored: the adapter was not trained with sound"
        elif use_sound:
            heard = "the clip's sound track" if track else "the sound"
            note = (f"{note}; " if note else "") + f"heard {heard}"
        return Prediction(best, option_letters(len(choices))[best], choices[best], probabilities, choices,
                          use_image, note, use_sound)
