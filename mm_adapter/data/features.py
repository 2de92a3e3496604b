"""Image features per ScienceQA problem: computed once through the feature cache, by pid.

Used by training (examples carry their problem's features) and by evaluation (each batch of
problems gets its projected features as prompt offsets). A problem without a usable image has
no row here and gets an offset of exactly 0. A problem's media may be a video clip (its ``image``
field names e.g. ``clip.gif``): with the encoder's ``frames`` = K it gives K frames in the encoder
config's ``frame_order``, a still image is held for all K.

Sounds go the same way through the audio encoder (``compute_audio_features``): a problem's ``audio`` file, else its
image when that is a clip with a sound track (a clip with sound carries both). With an image and a sound, a problem's
prompt offset is the sum of both projections' (``OffsetSum``), each exactly 0 where its input is absent.
"""

from __future__ import annotations

import functools
import hashlib
import io
import sys
import wave
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from mm_adapter.encoders.audio.decode import has_audio
from mm_adapter.encoders.audio.features import audio_features
from mm_adapter.encoders.audio.whisper import WhisperAudioEncoder
from mm_adapter.encoders.clip import ClipEncoder
from mm_adapter.encoders.feature_cache import MAX_IMAGE_BYTES, ImageInput, image_features
from mm_adapter.encoders.projection import VisualProjection
from mm_adapter.encoders.video import is_clip
from mm_adapter.errors import MMAdapterError, ScienceQAError
from mm_adapter.files.text import regular_file_size
from mm_adapter.scienceqa.data import Problem, audio_path, image_path
from mm_adapter.training.batches import Example

BLANK_GRAY, BLANK_SIZE = (128, 128, 128), 224
SILENCE_RATE = 16_000  # Whisper's rate: the blanked sound needs no resampling


def problem_image(problem: Problem, root: str | Path | None) -> ImageInput:
    """The image of a problem: HF-layout bytes, the official-layout file under ``root``, or None.
    An image path leading outside ``root/images`` raises ``ScienceQAError``."""
    if problem.image_bytes is not None:
        return problem.image_bytes
    if problem.image is None or root is None:
        return None
    return image_path(problem, root)


def _problem_images(problems: Sequence[Problem], root: str | Path | None,
                    skip_bad: bool) -> tuple[list[ImageInput], list[str]]:
    """Each problem's image; with ``skip_bad`` one whose path leaves the data folder is None, its reason listed."""
    images, skipped = [], []
    for problem in problems:
        try:
            images.append(problem_image(problem, root))
        except ScienceQAError as error:
            if not skip_bad:
                raise ScienceQAError(f"{error} (pass --skip-bad-images to treat it as a problem without an "
                                     "image)") from None
            images.append(None)
            skipped.append(str(error))
    return images, skipped


@dataclass
class ProblemFeatures:
    """Encoder features of problems by pid; problems absent here have no (usable) image."""

    by_pid: dict[str, torch.Tensor]
    dim: int
    skipped: list[str] = field(default_factory=list)
    frames: int = 1

    def rows(self, problems: Sequence[Problem]) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, [frames,] dim) features (zeros where no image) and a (batch,) bool mask."""
        zero = torch.zeros(self.dim) if self.frames == 1 else torch.zeros(self.frames, self.dim)
        features = torch.stack([self.by_pid.get(p.pid, zero) for p in problems])
        return features, torch.tensor([p.pid in self.by_pid for p in problems])

    def fingerprint(self, problems: Sequence[Problem]) -> str:
        """Hash of the features in problem order: part of a run's identity, so resume sees the same images."""
        digest = hashlib.sha256()
        features, mask = self.rows(problems)
        digest.update(features.numpy().tobytes())
        digest.update(mask.numpy().tobytes())
        return digest.hexdigest()[:16]


@functools.cache
def blank_image() -> bytes:
    """PNG bytes of one mid-gray 224x224 picture: what every image becomes when images are blanked."""
    buffer = io.BytesIO()
    Image.new("RGB", (BLANK_SIZE, BLANK_SIZE), BLANK_GRAY).save(buffer, format="PNG")
    return buffer.getvalue()


def compute_features(encoder: ClipEncoder, problems: Sequence[Problem], root: str | Path | None,
                     skip_bad: bool = False, batch_size: int = 32, blank: bool = False) -> ProblemFeatures:
    """Features of every problem's image or clip, through the disk cache (encoder runs only on cache misses).

    A missing or damaged image (or one whose path leads outside ``root/images``) is one error line
    naming it, or with ``skip_bad`` the problem is kept as a problem without an image and the reason
    is listed in ``skipped``. ``blank`` (the images-blanked ablation): every problem that has an image gets
    the features of one mid-gray picture instead, its own file is not read; the model still sees which
    problems have an image, but nothing of what it shows.
    """
    if blank:
        images, outside = [blank_image() if p.has_image else None for p in problems], []
    else:
        images, outside = _problem_images(problems, root, skip_bad)
    names = [f"problem {p.pid} (image bytes)" if p.image_bytes is not None else None for p in problems]
    frames = encoder.config.frames
    try:
        found = image_features(encoder, images, cache=True, on_error="skip" if skip_bad else "raise",
                               batch_size=batch_size, names=names, frames=frames, order=encoder.config.frame_order)
    except MMAdapterError as error:
        raise MMAdapterError(f"{error} (pass --skip-bad-images to treat it as a problem without an image)") from None
    by_pid = {p.pid: found.features[i] for i, p in enumerate(problems) if found.mask[i]}
    return ProblemFeatures(by_pid, encoder.feature_dim, outside + found.skipped, frames)


def report_skipped(features: ProblemFeatures, what: str, stream=None) -> None:
    """One line (on ``stream``, default stderr) saying how many bad images became no-image problems."""
    if features.skipped:
        print(f"{what}: {len(features.skipped)} bad image(s) skipped, those problems have no image "
              f"(first: {features.skipped[0]})", file=stream or sys.stderr)


def with_features(examples: Sequence[Example], problems: Sequence[Problem],
                  features: ProblemFeatures) -> list[dict]:
    """Copies of ``examples`` carrying ``image_features`` (dim,) and ``image_mask`` () for the collator."""
    rows, mask = features.rows(problems)
    return [{**example, "image_features": rows[i], "image_mask": mask[i]} for i, example in enumerate(examples)]


@dataclass
class ImageOffsets:
    """``eval.run`` offsets: a batch of problems -> their projected features (rows of 0 without an image)."""

    projection: VisualProjection
    features: ProblemFeatures

    @torch.no_grad()
    def __call__(self, problems: Sequence[Problem]) -> torch.Tensor:
        rows, mask = self.features.rows(problems)
        device = next(self.projection.parameters()).device
        return self.projection(rows.to(device), mask.to(device))


def problem_audio(problem: Problem, root: str | Path | None) -> str | Path | bytes | None:
    """The sound of a problem: its ``audio`` file under ``root`` (confined like images), else its image when that is
    a video clip with a sound track, else None. An audio path leading outside ``root/images`` raises."""
    if problem.audio is not None and root is not None:
        return audio_path(problem, root)
    try:
        image = problem_image(problem, root)
        if image is None or isinstance(image, bytes):
            data = image
        else:
            data = Path(image).read_bytes() if regular_file_size(image) <= MAX_IMAGE_BYTES else None
    except (OSError, MMAdapterError):
        return None  # a missing or bad image is reported by the image path
    return data if data is not None and is_clip(data) and has_audio(data) else None


@functools.cache
def silent_sound() -> bytes:
    """WAV bytes of one second of digital silence at 16 kHz: what every sound becomes when sounds are blanked. One
    fixed length, so not even a sound's duration reaches the model."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SILENCE_RATE)
        out.writeframes(bytes(2 * SILENCE_RATE))
    return buffer.getvalue()


def compute_audio_features(encoder: WhisperAudioEncoder, problems: Sequence[Problem], root: str | Path | None,
                           skip_bad: bool = False, batch_size: int = 8, blank: bool = False) -> ProblemFeatures:
    """Features of every problem's sound through the disk cache; a bad sound is one error line naming it, or with
    ``skip_bad`` its problem is kept as one without a sound and the reason listed. ``blank`` (the sound-vs-silence
    comparison): every problem that has a sound gets the features of :func:`silent_sound` instead, its own file not
    read; the model still sees which problems have a sound, but nothing of what it holds."""
    sounds, outside = [], []
    for problem in problems:
        try:
            sound = problem_audio(problem, root)
            sounds.append(silent_sound() if blank and sound is not None else sound)
        except ScienceQAError as error:
            if not skip_bad:
                raise ScienceQAError(f"{error} (pass --skip-bad-audio to treat it as a problem without a sound)"
                                     ) from None
            sounds.append(None)
            outside.append(str(error))
    names = [f"problem {p.pid} (clip bytes)" if isinstance(sound, bytes) else None
             for p, sound in zip(problems, sounds, strict=True)]
    try:
        found = audio_features(encoder, sounds, on_error="skip" if skip_bad else "raise", batch_size=batch_size,
                               names=names)
    except MMAdapterError as error:
        raise MMAdapterError(f"{error} (pass --skip-bad-audio to treat it as a problem without a sound)") from None
    by_pid = {p.pid: found.features[i] for i, p in enumerate(problems) if found.mask[i]}
    return ProblemFeatures(by_pid, encoder.feature_dim, outside + found.skipped)


def with_audio_features(examples: Sequence[dict], problems: Sequence[Problem], features: ProblemFeatures) -> list[dict]:
    """Copies of ``examples`` carrying ``audio_features`` (dim,) and ``audio_mask`` () for the collator."""
    rows, mask = features.rows(problems)
    return [{**example, "audio_features": rows[i], "audio_mask": mask[i]} for i, example in enumerate(examples)]


class OffsetSum(list):
    """Several ``ImageOffsets`` (the image's, the sound's) as one: a batch of problems -> the sum of their offsets."""

    @torch.no_grad()
    def __call__(self, problems: Sequence[Problem]) -> torch.Tensor:
        return sum(part(problems) for part in self)
