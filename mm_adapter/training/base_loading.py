"""The base of a training run: loaded whole, or (``--strategy fsdp``) hollow, to be filled a part per process.

:func:`load_training_base` settles the strategy and returns ``(model, tokenizer)`` as :func:`base.load_base` does.
Under fsdp the base is built from its config on the meta device; then its matrices become zero-memory CPU
placeholders (one zero broadcast to the full shape; the input embedding stays on meta) and its vectors (norms,
biases: a few KB a layer) are read from the files. An adapter attaches to it as to a loaded base, so its prompts
are created on the CPU from the same random numbers as in a single-process run (and ``norm_scaled`` reads the real
norms). The trainer then shards it (``fsdp.py``) and :func:`load_local_shards` fills each process's rows: no
process ever holds the whole base.

Loading uses ``safe_open(...).get_slice``, not ``torch.distributed.checkpoint``: FSDP2 keeps on each process one
contiguous block of rows (dim 0) of every weight, which is exactly what a slice of a safetensors tensor reads
(memory-mapped: only those bytes), straight from the transformers folder users already have. DCP's Hugging Face
reader would add a planning collective and key matching (a tied embedding is one parameter here, one tensor in
the file) for no gain.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mm_adapter.errors import MMAdapterError
from mm_adapter.files.safe_load import foreign_errors, one_line, open_safetensors
from mm_adapter.files.text import read_json
from mm_adapter.model.base import (
    BASE_SPEC_ATTR, CONFIG_NAME, check_model_folder, converted_folder, load_base, parse_dtype,
)
from mm_adapter.model.meta_format import is_meta_folder
from mm_adapter.training.config import TrainConfig
from mm_adapter.training.process import setup_distributed

SOURCE_ATTR = "mm_adapter_shard_source"  # set on a hollow base: where its weights are
SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
HUB_FILES = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.tiktoken", "*.txt"]
FSDP_NEEDS = ("fsdp reads each process's part of the base from safetensors files: pass a transformers model folder "
              "with *.safetensors weights, a hub id whose repository has them, smollm2-135m or a GGUF in parts")


@dataclass(frozen=True)
class ShardSource:
    """Where each tensor of a base lives: tensor name -> safetensors file."""

    folder: Path
    files: dict[str, Path]

    def bf16_bytes(self) -> int:
        """Bytes of every tensor in bf16 (read from the headers only)."""
        total = 0
        for file in sorted(set(self.files.values())):
            with open_safetensors(file) as handle:
                total += sum(math.prod(handle.get_slice(name).get_shape()) for name in handle.keys())
        return 2 * total


def shard_source(model: nn.Module) -> ShardSource | None:
    """The weights of a hollow base (None: a base loaded whole)."""
    return getattr(model, SOURCE_ATTR, None)


def _refuse(what: str) -> MMAdapterError:
    return MMAdapterError(f"--strategy fsdp: {what}; {FSDP_NEEDS}")


def local_base_folder(spec: str) -> Path | None:
    """The folder of a shard-loadable local base, or None for a hub id (fetched only after the launch check); a base
    that cannot be read a part at a time is refused in one line."""
    path = Path(spec).expanduser()
    converted = converted_folder(spec)  # smollm2-135m, a GGUF in parts: converted once to safetensors
    if converted is not None:
        return converted
    if path.suffix == ".gguf":
        raise _refuse(f"{path} is a GGUF file (quantised blocks, read whole)")
    if path.is_dir() and is_meta_folder(path):
        raise _refuse(f"{path} is a Meta-format folder (consolidated.*.pth pickles, read whole; convert it once with "
                      "transformers' convert_llama_weights_to_hf.py)")
    if path.is_dir() and not os.path.lexists(path / CONFIG_NAME):
        raise _refuse(f"{path} is not a transformers model folder (no {CONFIG_NAME})")
    if path.is_dir():
        return path
    if spec.startswith((".", "/", "~")) or path.exists() or spec.count("/") != 1:
        raise _refuse(f"no such model folder {spec!r}")
    return None


def hub_folder(repo_id: str) -> Path:
    """The local snapshot of a hub repository's config, tokenizer and safetensors files (downloaded if need be;
    every process asks, huggingface_hub's file locks let one download and the others wait)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
    except (OSError, ValueError) as error:  # offline, unknown repository or id, no permission (hub errors are OSErrors)
        raise MMAdapterError(f"could not fetch {repo_id!r} for sharded loading (no network or cache?): "
                             f"{one_line(error)}") from None


def source_in(folder: Path) -> ShardSource:
    """The safetensors files of a checked transformers folder; a folder without them is refused."""
    check_model_folder(folder)
    if (folder / SAFETENSORS_INDEX).is_file():
        weight_map = read_json(folder / SAFETENSORS_INDEX, SAFETENSORS_INDEX, expect=dict).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise MMAdapterError(f"{folder / SAFETENSORS_INDEX}: field 'weight_map' must map tensor names to files")
        return ShardSource(folder, {name: folder / file for name, file in weight_map.items()})
    if (folder / SAFETENSORS).is_file():
        with open_safetensors(folder / SAFETENSORS) as handle:
            return ShardSource(folder, {name: folder / SAFETENSORS for name in handle.keys()})
    raise _refuse(f"{folder} has no {SAFETENSORS} (PyTorch .bin pickles are read whole; save the model once with "
                  "save_pretrained(folder) to write safetensors)")


def device_memory(device: torch.device) -> int:
    """Bytes of one device: a GPU's own memory; on CPU the host's memory over the processes on this host."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return host // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def require_launch(world_size: int) -> None:
    """fsdp needs processes to split the base over."""
    if world_size < 2:
        raise MMAdapterError("--strategy fsdp splits the base over the processes of a distributed launch, but this "
                             "run is one process (WORLD_SIZE unset or 1); launch it with torchrun --nproc_per_node N "
                             "(N >= 2), or use --strategy ddp")


def choose_strategy(world_size: int, bf16_bytes: int, device_bytes: int) -> str:
    """``auto``'s rule: fsdp when several processes share the run and the base's bf16 weights exceed half of one
    device's memory (the other half is for activations, the adapter and the framework), else ddp."""
    return "fsdp" if world_size > 1 and bf16_bytes > device_bytes / 2 else "ddp"


def _auto_source(base: str) -> ShardSource | None:
    """The weights of a base fsdp could load a part at a time (None: read whole, so trained whole)."""
    try:
        return source_in(local_base_folder(base) or hub_folder(base))
    except MMAdapterError:
        return None


def load_training_base(base: str, dtype: str | None, train: TrainConfig, device: str | None = None):
    """``(model, tokenizer)`` for training under ``train.strategy``: the base loaded whole (ddp) or hollow (fsdp).

    ``device`` is the job's ``--device`` (``auto`` compares the base with its memory). Under fsdp a base that
    cannot be read a part at a time, then a run without a distributed launch, are refused in one line before any
    download or weight is read.
    """
    info = setup_distributed(device)
    if train.strategy == "fsdp":
        folder = local_base_folder(base)
        source = source_in(folder) if folder else None
        require_launch(info.world_size)
        return hollow_base(source or source_in(hub_folder(base)), base, dtype)
    if train.strategy == "auto" and info.world_size > 1:
        source = _auto_source(base)
        if source and choose_strategy(info.world_size, source.bf16_bytes(), device_memory(info.device)) == "fsdp":
            return hollow_base(source, base, dtype)
    return load_base(base, dtype=dtype)


def _stored_dtype(config, source: ShardSource) -> torch.dtype:
    """What ``from_pretrained(dtype="auto")`` would pick: the config's dtype, else the first floating tensor's."""
    stored = getattr(config, "dtype", None)
    if isinstance(stored, str):
        stored = getattr(torch, stored, None)
    if isinstance(stored, torch.dtype):
        return stored
    name, file = next(iter(sorted(source.files.items())))
    with open_safetensors(file) as handle:
        found = handle.get_slice(name).get_dtype()
    return {"BF16": torch.bfloat16, "F16": torch.float16}.get(found, torch.float32)


def hollow_base(source: ShardSource, spec: str, dtype: str | None):
    """The base built on the meta device, its matrices zero-memory placeholders and its vectors read (module doc)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    with foreign_errors(source.folder, "cannot build this transformers model from its config"):
        config = AutoConfig.from_pretrained(source.folder)
        tokenizer = AutoTokenizer.from_pretrained(source.folder)
        with init_empty_weights(include_buffers=False):  # buffers (rotary tables) are computed, not stored
            model = AutoModelForCausalLM.from_config(config, dtype=parse_dtype(dtype) or _stored_dtype(config, source),
                                                     attn_implementation="sdpa")
    _hollow(model, source)
    setattr(model, BASE_SPEC_ATTR, spec)
    setattr(model, SOURCE_ATTR, source)
    model.requires_grad_(False)
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def parameter_names(model: nn.Module) -> dict[int, str]:
    """Each parameter's first name (a tied embedding is one parameter with two names; the file holds the first)."""
    return {id(parameter): name for name, parameter in model.named_parameters()}


def replace_parameters(model: nn.Module, make) -> None:
    """Swap every parameter ``p`` for which ``make(name, p)`` returns one, keeping tied parameters tied."""
    names, made = parameter_names(model), {}
    for module in model.modules():
        for attr, parameter in list(module._parameters.items()):
            if parameter is not None and id(parameter) not in made:
                made[id(parameter)] = make(names[id(parameter)], parameter)
            if parameter is not None and made[id(parameter)] is not None:
                module._parameters[attr] = made[id(parameter)]


def _hollow(model: nn.Module, source: ShardSource) -> None:
    """Matrices: a zero broadcast to their shape (no memory); vectors: their values from the files. The input
    embedding stays on the meta device, so ``adapter_file.base_fingerprint`` says "unknown" at once instead of hashing
    placeholders (the trainer fingerprints the loaded shards). Every tensor must be in the files, in the config's
    shape, so a bad folder is refused here and not mid-run."""
    embedding = model.get_input_embeddings().weight

    def hollow(name: str, parameter: nn.Parameter) -> nn.Parameter | None:
        if name not in source.files:
            raise MMAdapterError(f"{source.folder}: the weights lack {name!r}, which the model config needs")
        with open_safetensors(source.files[name]) as handle:
            stored = handle.get_slice(name)
            if list(stored.get_shape()) != list(parameter.shape):
                raise MMAdapterError(f"{source.files[name]}: {name!r} is {stored.get_shape()}, the model config "
                                     f"needs {list(parameter.shape)}")
            if parameter is embedding:
                return None
            value = stored[:] if parameter.ndim < 2 else torch.zeros((), dtype=parameter.dtype).expand(parameter.shape)
        return nn.Parameter(value.to(parameter.dtype), requires_grad=False)

    replace_parameters(model, hollow)


def shard_rows(rows: int, rank: int, world_size: int) -> tuple[int, int]:
    """The rows FSDP2 keeps on ``rank``: ``torch.chunk`` blocks of ceil(rows / world_size) (the last ones may be
    short or empty)."""
    block = math.ceil(rows / world_size)
    start = min(rows, rank * block)
    return start, min(rows, start + block)


@torch.no_grad()
def load_local_shards(model: nn.Module, source: ShardSource, rank: int, world_size: int) -> tuple[int, int]:
    """Fill this process's rows of every sharded parameter from the files; returns (elements read, of all)."""
    from torch.distributed.tensor import DTensor, Shard

    local_total = total = 0
    for name, parameter in model.named_parameters():
        if not isinstance(parameter, DTensor):
            continue
        if tuple(parameter.placements) != (Shard(0),):
            raise MMAdapterError(f"{name}: expected FSDP's row sharding, got {parameter.placements}")
        local = parameter.to_local()
        start, stop = shard_rows(parameter.shape[0], rank, world_size)
        if local.shape[0] != stop - start:
            raise MMAdapterError(f"{name}: FSDP keeps {local.shape[0]} rows here, expected {stop - start}")
        if stop > start:
            with open_safetensors(source.files[name]) as handle:
                local.copy_(handle.get_slice(name)[start:stop].to(local.dtype))
        local_total, total = local_total + local.numel(), total + parameter.numel()
    return local_total, total
