"""Reading checkpoints from strangers without running their code.

A ``.pth``/``.pt``/``.bin`` file is a pickle, and unpickling can execute arbitrary code. Every
such read in this project goes through :func:`load_torch_file`, which only accepts tensors and
plain containers (``torch.load(weights_only=True)``); safetensors files cannot carry code at all.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from .errors import MMAdapterError


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and the metadata of a safetensors file; a truncated or corrupt file is one line."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}, handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise MMAdapterError(f"{path}: not a readable safetensors file (truncated or corrupt?): "
                             f"{str(error).splitlines()[0][:120]}") from None


def load_torch_file(path: str | Path) -> dict:
    """Load a torch pickle as tensors only, refusing anything that would construct other objects."""
    path = Path(path)
    if not path.is_file():
        raise MMAdapterError(f"{path}: no such file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=_is_zip(path))
    except pickle.UnpicklingError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else "unsupported content"
        raise MMAdapterError(
            f"{path}: refused to load: it contains objects other than tensors, which could run code "
            f"({first[:160]})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as error:
        raise MMAdapterError(f"{path}: not a readable torch checkpoint (truncated or corrupt?): "
                             f"{str(error).splitlines()[0][:160]}") from None
    if not isinstance(data, dict):
        raise MMAdapterError(f"{path}: expected a dict of tensors, found {type(data).__name__}")
    return data


def _is_zip(path: Path) -> bool:
    return zipfile.is_zipfile(path)
