"""Image features cached on disk, so epochs after the first never run the image encoder.

An entry is ``cache_root()/features/<encoder identity>/<sha[:2]>/<sha256 of the image bytes>.npy``.
The identity covers the model name, the depths, the preprocessing and a fingerprint of the
weights (so tags, checkpoint files and random seeds never share entries). Entries are written
atomically (temp file + ``os.replace``); an unreadable or mis-shaped entry is recomputed.

Bad images (missing, not an image, truncated, decompression bomb) raise one ``MMAdapterError``
line naming the file, or with ``on_error="skip"`` are logged in one line and treated as "no image".
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
from PIL import Image, UnidentifiedImageError

from .atomic import atomic_path
from .base import cache_root
from .errors import MMAdapterError
from .visual import ClipEncoder

log = logging.getLogger(__name__)
ImageInput = Union[str, Path, bytes, None]  # a file, its bytes (Hugging Face layout), or no image


def image_bytes(item: str | Path | bytes, name: str | None = None) -> tuple[bytes, str]:
    """The raw bytes of an image input and a name for messages."""
    if isinstance(item, (bytes, bytearray)):
        return bytes(item), name or f"<{len(item)} image bytes>"
    path = Path(item)
    try:
        return path.read_bytes(), name or str(path)
    except FileNotFoundError:
        raise MMAdapterError(f"{path}: image file not found") from None
    except IsADirectoryError:
        raise MMAdapterError(f"{path}: is a folder, not an image file") from None
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
    return image


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
        digest = hashlib.sha256(data).hexdigest()
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
