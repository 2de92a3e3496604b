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

from .atomic import atomic_path
from .base import cache_root
from .errors import MMAdapterError
from .textio import regular_file_size
from .visual import ClipEncoder

log = logging.getLogger(__name__)
ImageInput = Union[str, Path, bytes, None]  # a file, its bytes (Hugging Face layout), or no image
MAX_IMAGE_BYTES = 20 * 2**20  # an image file or upload larger than this is refused before it is read


def _too_large(size: int, label: str) -> MMAdapterError:
    return MMAdapterError(f"{label}: image file too large ({size / 2**20:.1f} MiB, limit "
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
    """Features for a batch: rows of problems without a (usable) image are zeros with mask False."""

    features: torch.Tensor  # (batch, feature_dim) float32
    mask: torch.Tensor  # (batch,) bool
    skipped: list[str] = field(default_factory=list)  # one-line reasons for images skipped


def image_features(encoder: ClipEncoder, images: Sequence[ImageInput], cache: FeatureCache | None | bool = True,
                   on_error: str = "raise", batch_size: int = 32, names: Sequence[str | None] | None = None
                   ) -> ImageFeatures:
    """Features for ``images`` (paths, bytes or None), from the cache where present, else the encoder.

    cache: True -> the default on-disk cache for this encoder; a FeatureCache; False/None -> none.
    on_error: "raise" (one MMAdapterError line naming the file) or "skip" (log it, mask False).
    Identical images in one call are encoded once.
    """
    if on_error not in ("raise", "skip"):
        raise MMAdapterError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if cache is True:
        cache = FeatureCache(encoder)
    features = torch.zeros(len(images), encoder.feature_dim)
    mask = torch.zeros(len(images), dtype=torch.bool)
    skipped: list[str] = []
    pending: dict[str, tuple[bytes, str, list[int]]] = {}  # digest -> (bytes, name, rows) for the encoder

    def bad(error: MMAdapterError) -> None:
        if on_error == "raise":
            raise error
        log.warning("skipping image: %s", error)
        skipped.append(str(error))

    for row, item in enumerate(images):
        if item is None:
            continue
        try:
            data, name = image_bytes(item, names[row] if names else None)
        except MMAdapterError as error:
            bad(error)
            continue
        digest = cache_key(data)
        hit = cache.get(digest) if cache else None
        if hit is not None:
            cache.hits += 1
            features[row], mask[row] = hit, True
        else:
            pending.setdefault(digest, (data, name, []))[2].append(row)
    digests = list(pending)
    for start in range(0, len(digests), batch_size):  # decode per chunk: memory stays one batch of pixels
        chunk, pixels = [], []
        for digest in digests[start:start + batch_size]:
            data, name, _ = pending[digest]
            try:
                pixels.append(encoder.preprocess(decode_image(data, name)))
            except MMAdapterError as error:
                bad(error)
                continue
            chunk.append(digest)
        if not chunk:
            continue
        out = encoder(torch.stack(pixels)).cpu()
        for digest, vector in zip(chunk, out):
            rows = pending[digest][2]
            features[rows], mask[rows] = vector, True
            if cache:
                cache.misses += 1
                cache.put(digest, vector)
    return ImageFeatures(features, mask, skipped)
