"""Loader for the Hugging Face copy of ScienceQA (`derek-thomas/ScienceQA`) through `datasets`.

That layout has no pids and embeds images, so each problem gets a stable pid f"{split}-{row}"
and keeps the encoded image in `Problem.image_bytes` for a later multimodal path. Only regular
parquet files are opened, and an image stored by path (no bytes) is read only from a regular
file inside the parquet files' folder; text fields are bounded as in `data.py`.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from mm_adapter.errors import ScienceQAError, fail
from mm_adapter.scienceqa.data import METADATA_FIELDS, Problem, not_regular, problem_from_record, require_file

# Our split names (those of pid_splits.json) -> the Hugging Face ones.
HF_SPLITS = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}
TEXT_COLUMNS = ("question", "choices", "answer", "hint", "lecture", "solution", *METADATA_FIELDS)


def _open(path_or_name: str | Path, split: str, cache_dir: str | None):
    """A `datasets.Dataset`: local parquet file(s) when the path exists, else a hub dataset name."""
    import datasets  # slow import, only needed here

    hf_split = HF_SPLITS.get(split, split)
    path = Path(path_or_name)
    if path.is_dir():
        files = sorted({*path.rglob(f"{hf_split}-*.parquet"), *path.rglob(f"{split}-*.parquet")})
        if not files:
            raise fail(path, f"no {hf_split}-*.parquet files for split {split!r}")
    elif path.exists():
        files = [path]
    else:
        files = None
    for file in files or ():
        require_file(file)
    try:
        if files is not None:
            data_files = {hf_split: [str(f) for f in files]}
            return datasets.load_dataset("parquet", data_files=data_files, split=hf_split, cache_dir=cache_dir)
        return datasets.load_dataset(str(path_or_name), split=hf_split, cache_dir=cache_dir)
    except (OSError, ValueError, datasets.exceptions.DatasetGenerationError) as e:  # not found, offline, bad parquet
        if isinstance(e, ScienceQAError):
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise fail(path_or_name, f"cannot load split {split!r}: {first}") from None


def _stored_file(name: str, folder: Path | None, source: str, pid: str) -> bytes | None:
    """The bytes of an image the parquet names by path: a regular file inside ``folder`` (the parquet
    files' folder; None for a hub copy, which embeds its images), or None when there is no such file."""
    if folder is None or not (folder / name).exists():
        return None
    path = folder / name
    if not path.resolve().is_relative_to(folder.resolve()):
        raise fail(source, f"image path {name!r} leads outside {folder}", pid, "image")
    reason = not_regular(path.stat().st_mode)
    if reason:
        raise fail(path, reason, pid, "image")
    return path.read_bytes()


def _image_bytes(value: Any, source: str, pid: str, folder: Path | None = None) -> bytes | None:
    """Encoded image bytes from the column value: None, {"bytes", "path"}, raw bytes or a PIL image."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        return _stored_file(value["path"], folder, source, pid) if value.get("path") else None
    if hasattr(value, "save"):  # PIL.Image
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return buffer.getvalue()
    raise fail(source, f"unsupported image value {type(value).__name__}", pid, "image")


def load_hf(path_or_name: str | Path, split: str, cache_dir: str | None = None) -> list[Problem]:
    """Problems of `split` ("train", "val"/"validation", "test") from parquet file(s) or the hub."""
    import datasets

    ds = _open(path_or_name, split, cache_dir)
    source = f"{path_or_name}[{split}]"
    missing = [c for c in ("question", "choices", "answer") if c not in ds.column_names]
    if missing:
        raise fail(source, f"missing columns {', '.join(missing)}")
    if isinstance(ds.features.get("image"), datasets.Image):
        ds = ds.cast_column("image", datasets.Image(decode=False))  # keep the encoded bytes
    our_split = "val" if split == "validation" else split
    local = Path(path_or_name)
    folder = local if local.is_dir() else local.parent if local.exists() else None
    problems = []
    for index, row in enumerate(ds):
        pid = f"{our_split}-{index}"
        image = _image_bytes(row.get("image"), source, pid, folder)
        record = {name: row.get(name) for name in TEXT_COLUMNS}
        record.update(image="image.png" if image is not None else None, split=our_split)
        problems.append(problem_from_record(pid, record, source, image_bytes=image))
    return problems
