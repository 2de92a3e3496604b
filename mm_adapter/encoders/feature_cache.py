"""Image features cached on disk, so epochs after the first never run the image encoder.

An entry is ``cache_root()/features/<encoder identity>/<sha[:2]>/<sha256 of the image bytes>.npy``.
The identity covers the model name, the depths, the preprocessing and a fingerprint of the
weights (so tags, checkpoint files and random seeds never share entries). Entries are written
atomically (temp file + ``os.replace``); an unreadable or mis-shaped entry is recomputed.

Bad images (missing, not a regular file, over ``MAX_IMAGE_BYTES``, not an image, truncated,
decompression bomb) raise one ``MMAdapterError`` line naming the file, or with ``on_error="skip"``
are logged in one line and treated as "no image". A FIFO, device or folder is refused before it
is opened (reading a FIFO blocks forever). A JPEG's EXIF orientation is applied before encoding,
so a photo taken sideways is seen upright; its cache key says so (entries made before were not).

Video clips (GIF, MP4, WebM; ``video.py``) go through the same path: with ``frames=K`` each clip gives
K uniformly sampled frames, each encoded and cached as its own entry ``<sha256 of the clip>-clip<K>-<t>``;
a still image keeps its one entry and is held for all K frames. The byte limit is the same for both.
"""

from __future__ import annotations

import hashlib
import io
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from mm_adapter.encoders.clip import ClipEncoder
from mm_adapter.encoders.video import check_frames, clip_frames, frame_order, is_clip, looks_like_video
from mm_adapter.errors import MMAdapterError
from mm_adapter.files.atomic import atomic_path
from mm_adapter.files.text import regular_file_size
from mm_adapter.model.base import cache_root

log = logging.getLogger(__name__)
ImageInput = Union[str, Path, bytes, None]  # a file, its bytes (Hugging Face layout), or no image
MAX_IMAGE_BYTES = 20 * 2**20  # an image or clip file (or upload) larger than this is refused before it is read


def _too_large(size: int, label: str) -> MMAdapterError:
    kind = "video" if looks_like_video(label) else "image"
    return MMAdapterError(f"{label}: {kind} file too large ({size / 2**20:.1f} MiB, limit "
                          f"{MAX_IMAGE_BYTES / 2**20:.0f} MiB)")


def image_bytes(item: str | Path | bytes, name: str | None = None) -> tuple[bytes, str]:
    """The raw bytes of an image input (at most ``MAX_IMAGE_BYTES``) and a name for messages."""
    if isinstance(item, (bytes, bytearray)):
        name = name or f"<{len(item)} image bytes>"
        if len(item) > MAX_IMAGE_BYTES:
            raise _too_large(len(item), name)
        return bytes(item), name
    path = Path(item)
    size = regular_file_size(path, "image file")  # a FIFO, device or folder is refused before it is opened
    try:
        if size > MAX_IMAGE_BYTES:
            raise _too_large(size, name or str(path))
        return path.read_bytes(), name or str(path)
    except OSError as error:
        raise MMAdapterError(f"{path}: cannot read image ({error.strerror or error})") from None


def decode_image(data: bytes, name: str) -> Image.Image:
    """Fully decode ``data`` with PIL, turning every failure into one line naming the file.

    Pixel count is checked against PIL's ``Image.MAX_IMAGE_PIXELS`` (its decompression-bomb guard;
    here over the limit is an error, not a warning) before the pixels are decoded.
    """
    limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        pixels = str(error).split("(")[1].split(" ")[0] if "(" in str(error) else "too many"
        raise MMAdapterError(f"{name}: image too large ({pixels} pixels, over PIL's Image.MAX_IMAGE_PIXELS "
                             f"limit of {limit:,}, a decompression-bomb guard)") from None
    except UnidentifiedImageError:
        raise MMAdapterError(f"{name}: not an image (PIL cannot identify the file format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise MMAdapterError(f"{name}: damaged or truncated image ({str(error).splitlines()[0][:100]})") from None
    return upright(image)


def upright(image: Image.Image) -> Image.Image:
    """The image as it is meant to be seen: its EXIF orientation applied (unreadable EXIF: as stored)."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - damaged EXIF must not make the pixels unusable
        return image


def orientation(data: bytes) -> int:
    """The EXIF orientation tag of encoded image bytes (1, upright, when absent or unreadable); reads the header only."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return int(image.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:  # noqa: BLE001 - a bad image is reported when it is decoded
        return 1


def cache_key(data: bytes) -> str:
    """sha256 of the bytes; a rotated one also names its orientation (older entries hold it unrotated)."""
    digest = hashlib.sha256(data).hexdigest()
    turn = orientation(data)
    return digest if turn == 1 else f"{digest}-exif{turn}"


def load_image(item: str | Path | bytes, name: str | None = None) -> Image.Image:
    data, name = image_bytes(item, name)
    return decode_image(data, name)


class FeatureCache:
    """One folder of ``<sha256>.npy`` float32 feature vectors for one encoder identity."""

    def __init__(self, encoder: ClipEncoder, root: str | Path | None = None):
        self.folder = Path(root or cache_root() / "features") / encoder.identity
        self.dim = encoder.feature_dim
        self.hits = self.misses = 0

    def path(self, digest: str) -> Path:
        return self.folder / digest[:2] / f"{digest}.npy"

    def get(self, digest: str) -> torch.Tensor | None:
        path = self.path(digest)
        try:
            array = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError) as error:
            log.warning("%s: corrupt feature cache entry, recomputing (%s)", path, str(error)[:80])
            return None
        if array.shape != (self.dim,) or array.dtype != np.float32:
            log.warning("%s: feature cache entry has shape %s %s, recomputing", path, array.shape, array.dtype)
            return None
        return torch.from_numpy(array)

    def put(self, digest: str, features: torch.Tensor) -> None:
        path = self.path(digest)
        with atomic_path(path) as tmp:  # readers see nothing or a whole entry
            np.save(tmp, features.detach().cpu().float().numpy(), allow_pickle=False)


@dataclass
class ImageFeatures:
    """Features for a batch: rows of problems without a (usable) image are zeros with mask False.

    ``features`` is (batch, feature_dim) with one frame, (batch, frames, feature_dim) with more."""

    features: torch.Tensor  # float32
    mask: torch.Tensor  # (batch,) bool
    skipped: list[str] = field(default_factory=list)  # one-line reasons for images skipped


def frame_keys(data: bytes, frames: int) -> list[str]:
    """The cache keys of the frames ``data`` gives: a still image's own key (held for all K frames), or per sampled
    frame of a clip its bytes' sha256, K and the frame's place among the K."""
    if not is_clip(data):
        return [cache_key(data)]
    digest = hashlib.sha256(data).hexdigest()
    return [f"{digest}-clip{frames}-{t}" for t in range(frames)]


def decode_media(data: bytes, name: str, frames: int = 1) -> list[Image.Image]:
    """The pictures the encoder sees: K frames of a clip (``video.clip_frames``), or the one still image."""
    if is_clip(data):
        return clip_frames(data, name, frames)
    try:
        return [decode_image(data, name)]
    except MMAdapterError:
        if looks_like_video(name):  # a .mp4 that is neither a clip nor an image: say what it is not
            raise MMAdapterError(f"{name}: not a video clip (no GIF, MP4 or WebM data in it)") from None
        raise


@dataclass
class _Media:
    """One distinct image or clip of a call: its bytes, name, frames' cache keys, and the rows that show it."""

    data: bytes
    name: str
    keys: list[str]
    rows: list[int] = field(default_factory=list)


def image_features(encoder: ClipEncoder, images: Sequence[ImageInput], cache: FeatureCache | None | bool = True,
                   on_error: str = "raise", batch_size: int = 32, names: Sequence[str | None] | None = None,
                   frames: int = 1, order: str = "ordered") -> ImageFeatures:
    """Features for ``images`` (paths, bytes or None: stills or clips), from the cache where present, else the encoder.

    cache: True -> the default on-disk cache for this encoder; a FeatureCache; False/None -> none.
    on_error: "raise" (one MMAdapterError line naming the file) or "skip" (log it, mask False).
    frames: K sampled frames per clip (a still image is held for all K); 1 keeps the (batch, feature_dim) shape.
    order: "shuffled" shows each clip's frames in a fixed random order (``video.frame_order``).
    Identical images (and frames) in one call are encoded once.
    """
    if on_error not in ("raise", "skip"):
        raise MMAdapterError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    check_frames(frames)
    cache = FeatureCache(encoder) if cache is True else cache
    skipped: list[str] = []

    def bad(error: MMAdapterError) -> None:
        if on_error == "raise":
            raise error
        log.warning("skipping image: %s", error)
        skipped.append(str(error))

    found: dict[str, torch.Tensor] = {}  # frame key -> features
    shown: dict[int, list[str]] = {}  # row -> its frames' keys
    pending: dict[str, _Media] = {}  # first frame key -> media the encoder must see
    for row, item in enumerate(images):
        if item is None:
            continue
        try:
            data, name = image_bytes(item, names[row] if names else None)
        except MMAdapterError as error:
            bad(error)
            continue
        shown[row] = keys = frame_keys(data, frames)
        hits = [cache.get(key) for key in keys] if cache else [None]
        if all(hit is not None for hit in hits):
            cache.hits += 1
            found.update(zip(keys, hits))
        else:
            pending.setdefault(keys[0], _Media(data, name, keys)).rows.append(row)
    _encode(encoder, pending.values(), frames, found, cache, bad, batch_size)
    features, mask = _assemble(len(images), shown, found, frames, order, encoder.feature_dim)
    return ImageFeatures(features, mask, skipped)


def _encode(encoder: ClipEncoder, pending, frames: int, found: dict[str, torch.Tensor], cache, bad,
            batch_size: int) -> None:
    """Decode each pending image or clip and encode its frames, ``batch_size`` frames per forward (memory stays one
    batch of pixels); results go to ``found`` and the cache."""
    keys: list[str] = []
    pixels: list[torch.Tensor] = []

    def flush() -> None:
        for key, vector in zip(keys, encoder(torch.stack(pixels)).cpu()):
            found[key] = vector
            if cache:
                cache.put(key, vector)
        keys.clear()
        pixels.clear()

    for media in pending:
        try:
            pictures = decode_media(media.data, media.name, frames)
        except MMAdapterError as error:
            bad(error)
            continue
        if cache:
            cache.misses += 1
        for key, picture in zip(media.keys, pictures):
            keys.append(key)
            pixels.append(encoder.preprocess(picture))
            if len(pixels) >= batch_size:
                flush()
    if pixels:
        flush()


def _assemble(rows: int, shown: dict[int, list[str]], found: dict[str, torch.Tensor], frames: int, order: str,
              dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, [frames,] dim) features and the mask: a still held for all frames, a clip's frames in ``order``."""
    features = torch.zeros(rows, dim) if frames == 1 else torch.zeros(rows, frames, dim)
    mask = torch.zeros(rows, dtype=torch.bool)
    for row, keys in shown.items():
        if not all(key in found for key in keys):
            continue  # its image was bad and skipped
        if len(keys) == 1:
            features[row] = found[keys[0]]  # broadcast: a still image is every frame
        else:
            features[row] = torch.stack([found[keys[t]] for t in frame_order(frames, order, keys[0])])
        mask[row] = True
    return features, mask
