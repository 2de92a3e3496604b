"""Loader for the Hugging Face copy of ScienceQA (`derek-thomas/ScienceQA`) through `datasets`.

That layout has no pids and embeds images, so each problem gets a stable pid f"{split}-{row}"
and keeps the encoded image in `Problem.image_bytes` for a later multimodal path.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from mm_adapter.scienceqa.data import METADATA_FIELDS, Problem, problem_from_record
from mm_adapter.scienceqa.errors import ScienceQAError, fail

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
    elif path.is_file():
        files = [path]
    else:
        files = None
    try:
        if files is not None:
            data_files = {hf_split: [str(f) for f in files]}
            return datasets.load_dataset("parquet", data_files=data_files, split=hf_split, cache_dir=cache_dir)
        return datasets.load_dataset(str(path_or_name), split=hf_split, cache_dir=cache_dir)
    except (OSError, ValueError) as e:  # DatasetNotFoundError, connection errors, bad parquet
        if isinstance(e, ScienceQAError):
            raise
        raise fail(path_or_name, f"cannot load split {split!r}: {e}") from None


def _image_bytes(value: Any, source: str, pid: str) -> bytes | None:
    """Encoded image bytes from the column value: None, {"bytes", "path"}, raw bytes or a PIL image."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        if value.get("path") and Path(value["path"]).is_file():
            return Path(value["path"]).read_bytes()
        return None
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
    problems = []
    for index, row in enumerate(ds):
        pid = f"{our_split}-{index}"
        image = _image_bytes(row.get("image"), source, pid)
        record = {name: row.get(name) for name in TEXT_COLUMNS}
        record.update(image="image.png" if image is not None else None, split=our_split)
        problems.append(problem_from_record(pid, record, source, image_bytes=image))
    return problems
