"""Short video clips (GIF, MP4, WebM) as K frames sampled uniformly: what the visual path sees of a clip.

Decoding is PyAV (``av``): its wheels carry FFmpeg's own decoders (GIF, H.264, MPEG-4, VP8, VP9), so a
plain ``pip install`` reads all three containers with no system FFmpeg, and FFmpeg is the reference decoder
for them. A clip is told by its bytes, never its name: an MP4/MOV ``ftyp`` box, a WebM/Matroska EBML header,
or a GIF with more than one frame (a one-frame GIF is a still image, read by PIL as before).

Sampling: frame t of K is the clip's frame floor((t + 1/2) n / K), the middle of the t-th of K equal
segments, so K = 1 is the middle frame. A still image is the 1-frame case: it is held for all K frames.

Bounds, each one ``MMAdapterError`` line naming the file: the byte limit of images (checked before
reading), at most ``MAX_CLIP_FRAMES`` frames (decoding stops there), frames within PIL's pixel limit, no
video stream or no frames, fewer frames than K, and damage (FFmpeg's errors, a GIF without its trailer,
fewer frames than the container declares).
"""

from __future__ import annotations

import contextlib
import io
import random
from collections.abc import Iterator
from pathlib import Path

import av
from PIL import Image

from mm_adapter.encoders.config import FRAME_ORDERS, MAX_FRAMES
from mm_adapter.errors import MMAdapterError

MAX_CLIP_FRAMES = 1000  # decoded frames in one clip; a longer clip is refused (about 40 s at 25 fps)
VIDEO_SUFFIXES = (".gif", ".mp4", ".m4v", ".mov", ".webm", ".mkv")
GIF_HEADERS = (b"GIF87a", b"GIF89a")
GIF_TRAILER = b";"
EBML_HEADER = b"\x1a\x45\xdf\xa3"  # WebM / Matroska
_DECODE_ERRORS = (av.FFmpegError, OSError, ValueError, EOFError, MemoryError)


def is_clip(data: bytes) -> bool:
    """True for MP4/MOV, WebM/Matroska and animated GIF bytes; a still image (a one-frame GIF too) is not a clip."""
    if data[4:8] == b"ftyp" or data[:4] == EBML_HEADER:
        return True
    return data[:6] in GIF_HEADERS and _animated_gif(data)


def _animated_gif(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return bool(getattr(image, "is_animated", False))
    except Exception:  # noqa: BLE001 - a damaged GIF is reported by whoever decodes it
        return False


def looks_like_video(name: str) -> bool:
    """Whether a file name promises a clip (for messages about bytes that are not one)."""
    return Path(name).suffix.lower() in VIDEO_SUFFIXES


def check_frames(frames: int) -> None:
    """K must be an int in [1, MAX_FRAMES] (the config checks this too; library callers come here directly)."""
    if isinstance(frames, bool) or not isinstance(frames, int) or not 1 <= frames <= MAX_FRAMES:
        raise MMAdapterError(f"frames must be an integer from 1 to {MAX_FRAMES}, got {frames!r}")


def sample_indices(count: int, frames: int) -> list[int]:
    """The K frame indices sampled uniformly from ``count`` frames: segment middles (K = 1: the middle frame)."""
    return [((2 * t + 1) * count) // (2 * frames) for t in range(frames)]


def frame_order(frames: int, order: str, key: str) -> list[int]:
    """Positions in which a clip's K frames are shown: in time order, or (``shuffled``) a permutation seeded by
    ``key`` (the clip's digest), the same in training, evaluation and the demo."""
    if order not in FRAME_ORDERS:
        raise MMAdapterError(f"frame order must be one of {', '.join(FRAME_ORDERS)}, got {order!r}")
    positions = list(range(frames))
    if order == "shuffled":
        random.Random(key).shuffle(positions)
    return positions


class _EndOfClip(MMAdapterError):
    """FFmpeg met the end of the data: a truncated clip, or one with no frames at all."""


@contextlib.contextmanager
def _reading(name: str) -> Iterator[None]:
    """FFmpeg's (and PyAV's) failures as one line naming the file."""
    try:
        yield
    except MMAdapterError:
        raise
    except _DECODE_ERRORS as error:
        detail = (str(error).strip().splitlines() or [type(error).__name__])[0][:120]
        kind = _EndOfClip if isinstance(error, EOFError) else MMAdapterError
        raise kind(f"{name}: damaged or truncated video clip ({detail})") from None


def _check_pixels(width: int, height: int, name: str) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    if limit and width * height > limit:
        raise MMAdapterError(f"{name}: clip frames too large ({width}x{height} pixels, over PIL's "
                             f"Image.MAX_IMAGE_PIXELS limit of {limit:,})")


def _decoded(data: bytes, name: str) -> Iterator[av.VideoFrame]:
    """Every frame of the clip's first video stream, in order, within the bounds above."""
    with _reading(name), av.open(io.BytesIO(data), mode="r") as container:
        if not container.streams.video:
            raise MMAdapterError(f"{name}: the clip has no frames (no video stream in it)")
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1  # --threads is the budget; clips here are small
        _check_pixels(stream.codec_context.width, stream.codec_context.height, name)
        count = 0
        for count, frame in enumerate(container.decode(stream), start=1):
            if count > MAX_CLIP_FRAMES:
                raise MMAdapterError(f"{name}: clip too long (over {MAX_CLIP_FRAMES:,} frames, MAX_CLIP_FRAMES)")
            _check_pixels(frame.width, frame.height, name)
            yield frame
        if 0 < count < stream.frames:
            raise MMAdapterError(f"{name}: damaged or truncated video clip ({count} of the {stream.frames} frames "
                                 "its container declares could be decoded)")


def count_frames(data: bytes, name: str) -> int:
    """The number of frames the clip decodes to, checked for damage and bounds; no frames is an error."""
    if data[:6] in GIF_HEADERS and not data.rstrip(b"\0").endswith(GIF_TRAILER):
        raise MMAdapterError(f"{name}: damaged or truncated video clip (the GIF ends without its trailer)")
    count = 0
    try:
        for count, _ in enumerate(_decoded(data, name), start=1):
            pass
    except _EndOfClip:
        if count:
            raise
    if count == 0:
        raise MMAdapterError(f"{name}: the clip has no frames")
    return count


def clip_frames(data: bytes, name: str, frames: int) -> list[Image.Image]:
    """K RGB frames sampled uniformly from the clip, in time order; a clip shorter than K is refused.

    Two decoding passes: the first counts the frames (and finds damage), the second keeps only the K sampled ones,
    so memory holds K frames, never the whole clip."""
    check_frames(frames)
    count = count_frames(data, name)
    if frames > count:
        raise MMAdapterError(f"{name}: the clip has {count} frame{'s' * (count != 1)}, fewer than frames={frames}")
    wanted = sample_indices(count, frames)
    kept: dict[int, Image.Image] = {}
    with contextlib.closing(_decoded(data, name)) as decoded:
        for index, frame in enumerate(decoded):
            if index in wanted:
                kept[index] = frame.to_image().convert("RGB")
            if index >= wanted[-1]:
                break
    if len(kept) < len(set(wanted)):
        raise MMAdapterError(f"{name}: damaged or truncated video clip (frame {wanted[-1]} could not be decoded)")
    return [kept[index] for index in wanted]
