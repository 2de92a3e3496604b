"""Reading checkpoints from strangers without running their code, and without their errors escaping.

A ``.pth``/``.pt``/``.bin`` file is a pickle, and unpickling can execute arbitrary code. Every
such read in this project goes through :func:`load_torch_file`, which only accepts tensors and
plain containers (``torch.load(weights_only=True)``); safetensors files cannot carry code at all.
Whatever the libraries that parse a stranger's file raise for a bad one becomes one
:class:`MMAdapterError` line naming the file (:func:`foreign_errors`).
"""

from __future__ import annotations

import pickle
import struct
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from mm_adapter.errors import MMAdapterError
from mm_adapter.files.text import regular_file_size

# What transformers, tokenizers, safetensors, gguf, sentencepiece, json and torch raise for a bad file (each
# seen with a real bad file: a truncated GGUF -> struct.error, a tokenizer.json of the wrong structure ->
# KeyError or the bare Exception of tokenizers' Rust core, num_attention_heads 0 -> ZeroDivisionError, a
# config.json field of the wrong type -> huggingface_hub's StrictDataclassError or TypeError...). Only
# the libraries' own calls are wrapped, so a bug in our code still surfaces as itself.
LIBRARY_FILE_ERRORS = (OSError, ValueError, RuntimeError, LookupError, TypeError, AttributeError, ArithmeticError,
                       EOFError, struct.error, SafetensorError, zipfile.BadZipFile, pickle.UnpicklingError)
_UNPICKLER_MARKER = "WeightsUnpickler error:"


def _library_file_error(error: Exception) -> bool:
    from huggingface_hub.errors import StrictDataclassError  # a transformers dependency

    # tokenizers' Rust core raises the bare Exception for a tokenizer.json it cannot read
    return isinstance(error, (*LIBRARY_FILE_ERRORS, StrictDataclassError)) or type(error) is Exception


def one_line(error: BaseException, limit: int = 200) -> str:
    """``Type: message`` on one line, whitespace collapsed, at most ``limit`` characters of message."""
    name = type(error).__name__
    name = name if name[:1].isupper() else f"{type(error).__module__}.{name}"  # struct.error, not "error"
    # torch's own text for an UnpicklingError suggests weights_only=False: never pass that on
    text = _unpickling_detail(error) if isinstance(error, pickle.UnpicklingError) else " ".join(str(error).split())
    text = text or "no details"
    return f"{name}: {text if len(text) <= limit else text[:limit - 3] + '...'}"


@contextmanager
def foreign_errors(path: str | Path, what: str, types: tuple[type[Exception], ...] | None = None) -> Iterator[None]:
    """Turn what a library raises while parsing ``path`` into one line: ``PATH: WHAT (Type: message)``.

    ``types``: narrower than the libraries' errors where the block runs our own code too (torch's shape
    errors are RuntimeError).
    """
    try:
        yield
    except MMAdapterError:
        raise
    except Exception as error:  # narrowed just below; everything else is re-raised as itself
        if not (isinstance(error, types) if types else _library_file_error(error)):
            raise
        raise MMAdapterError(f"{path}: {what} ({one_line(error)})") from error


@contextmanager
def open_safetensors(path: str | Path) -> Iterator:
    """``safe_open`` of a regular file (its header checked against the file's size); any failure, also while
    reading tensors inside the block, is one line naming the file."""
    regular_file_size(path, "safetensors file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            yield handle
    except MMAdapterError:
        raise
    except (SafetensorError, OSError, ValueError) as error:
        raise MMAdapterError(f"{path}: not a readable safetensors file (truncated or corrupt?): "
                             f"{str(error).splitlines()[0][:120]}") from None


def read_safetensors(path: str | Path, check_metadata: Callable[[dict[str, str]], None] | None = None
                     ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and the metadata of a safetensors file; a truncated or corrupt file is one line.

    ``check_metadata`` sees the metadata before any tensor is read, so a file of another kind (a
    base model's multi-gigabyte weights given as an adapter) is refused without loading it.
    """
    with open_safetensors(path) as handle:
        metadata = handle.metadata() or {}
        if check_metadata is not None:
            check_metadata(metadata)
        return {key: handle.get_tensor(key) for key in handle.keys()}, metadata  # noqa: SIM118 (no __iter__)


def load_torch_file(path: str | Path, wrapper: str | None = None,
                    beside: frozenset[str] = frozenset()) -> dict[str, torch.Tensor]:
    """Load a torch pickle as a dict of tensors only, refusing anything that would construct other objects.

    ``wrapper``: a pickle holding only ``{wrapper: state_dict}`` (how Lightning Fabric saves) is unwrapped, and so is
    one that also holds entries named in ``beside`` (settings saved next to the weights, such as the official
    LLaMA-Adapter V2 release's ``config``), which are dropped.
    """
    path = Path(path)
    regular_file_size(path, "torch checkpoint")
    zipped = _is_zip(path)
    if not zipped and _plain_pickle(path):
        raise MMAdapterError(f"{path}: is a plain Python pickle (pickle.dump), not a torch checkpoint "
                             "(torch.save writes a zip archive); refused: loading a pickle can run code, save the "
                             "tensors with torch.save or safetensors instead")
    with foreign_errors(path, "not a readable torch checkpoint (truncated or corrupt?)"):
        try:
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
        except pickle.UnpicklingError as error:
            raise _refusal(path, error) from None
    if not isinstance(data, dict):
        raise MMAdapterError(f"{path}: expected a dict of tensors, found {type(data).__name__}")
    if wrapper is not None and wrapper in data and set(data) <= {wrapper, *beside} and isinstance(data[wrapper], dict):
        data = data[wrapper]
    for key, value in data.items():
        if not isinstance(value, torch.Tensor):
            raise MMAdapterError(f"{path}: entry {key!r} is a {type(value).__name__}, expected a tensor")
    return data


def _unpickling_detail(error: pickle.UnpicklingError) -> str:
    """The first sentence of what torch's weights-only unpickler found (never its advice to turn the check off)."""
    text = str(error)
    text = text.split(_UNPICKLER_MARKER, 1)[1] if _UNPICKLER_MARKER in text else text
    paragraphs = [" ".join(part.split()) for part in text.split("\n\n") if part.strip()]
    details = [part for part in paragraphs if not part.startswith(("Weights only load failed", "Check the doc"))]
    return (details or ["unsupported content"])[0].split(". ")[0].rstrip(".")[:160]


def _refusal(path: Path, error: pickle.UnpicklingError) -> MMAdapterError:
    """torch's weights-only refusal in our words: code (a GLOBAL it blocks) or no checkpoint at all."""
    detail = _unpickling_detail(error)
    if "global" not in detail.lower():
        return MMAdapterError(f"{path}: not a readable torch checkpoint (truncated or corrupt?): {detail}")
    return MMAdapterError(f"{path}: refused to load: it contains objects other than tensors, which could run code "
                          f"({detail})")


def check_tensor(path: str | Path, key: str, tensor: torch.Tensor, floating: bool = True) -> None:
    """Refuse a tensor that is not floating point (when ``floating``) or holds NaN or infinity."""
    if floating and not tensor.is_floating_point():
        raise MMAdapterError(f"{path}: {key} has dtype {str(tensor.dtype).removeprefix('torch.')}, expected "
                             "floating point")
    if (tensor.is_floating_point() or tensor.is_complex()) and not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise MMAdapterError(f"{path}: {key} holds {bad} non-finite value(s) (NaN or infinity)")


def _is_zip(path: Path) -> bool:
    return zipfile.is_zipfile(path)


# torch's legacy (pre-1.6) format is a pickle too, but it opens with this pickled magic number
_LEGACY_TORCH_MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)[:12]


def _plain_pickle(path: Path) -> bool:
    """A file of ``pickle.dump`` (a protocol 2+ header) that is not torch's legacy format."""
    with open(path, "rb") as handle:
        head = handle.read(len(_LEGACY_TORCH_MAGIC))
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5 and head != _LEGACY_TORCH_MAGIC
