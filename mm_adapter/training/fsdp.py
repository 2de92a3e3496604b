"""Training an adapter on a frozen base split over the processes of a torchrun launch (FSDP2, ``fully_shard``).

* **The frozen base is sharded.** Each decoder layer is one unit, the input and output embeddings one (they may
  be one tied parameter), the decoder itself (its final norm) the outermost; the model object is not wrapped, so
  its class, and the architecture adapter files record, stay the base's. A process keeps a block of rows of
  every weight and all-gathers a unit's weights just before it runs (again for the backward); with
  ``--activation-checkpointing`` the recomputation runs inside that window. The base comes hollow from
  ``base_loading.load_training_base``; :func:`shard_for_training` shards it on the meta device and each process
  reads its own rows from the files.
* **The adapter is replicated.** Its parameters are ``ignored_params`` of every unit: plain tensors each process
  holds whole, their gradients summed over processes in one all-reduce per optimizer step
  (:meth:`ShardedRun.sync_gradients`). It is tiny next to a shard (LLaMA-65B, 80 layers x 10 prompts: 6.6 M
  parameters, 26 MB, 52 MB of AdamW state, against 16 GB of base per GPU on 8), so sharding it would save under
  0.1 GB per GPU at the price of uneven shards (a 10-row prompt on 8 processes, 1-element gates), gathers at every
  checkpoint and a second checkpoint layout. Replicated, the optimizer, clipping, checkpoints (written by rank 0
  from its own copy, in the usual format) and exact resume are the single-process code, unchanged. No sharded
  parameter has a gradient, so nothing is ever reduce-scattered.
* **bf16** is ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)``: units are gathered and run in bf16
  (no cast at all for a base stored in bf16), under the trainer's bf16 autocast as in any run.
* **Adapter files and the run identity** record a fingerprint of the base (``adapter_file.base_fingerprint``:
  samples of the embedding and of every layer's k_proj). One process cannot sample a sharded weight, so the
  samples are gathered once, after loading, onto a meta-device copy of the model that carries the live adapter
  (:func:`export_view`); the identity and the adapter file are read from it, equal to a single-process run's.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from mm_adapter.errors import MMAdapterError
from mm_adapter.model.adapter import (
    adapter_config, adaption_prompts, attach_adapter, decoder_layers, has_adapter, is_adapter_parameter,
)
from mm_adapter.model.adapter_file import _FINGERPRINT_SAMPLES
from mm_adapter.model.base import BASE_SPEC_ATTR
from mm_adapter.training.base_loading import ShardSource, load_local_shards, replace_parameters, shard_source
from mm_adapter.training.config import TrainConfig
from mm_adapter.training.process import DistInfo


@dataclass
class ShardedRun:
    """A base sharded for training: the view that identity and export read, and the replicated trainables."""

    view: nn.Module
    trainable: list[nn.Parameter]
    local_elements: int
    base_elements: int

    def sync_gradients(self) -> None:
        """Sum the adapter's gradients over all processes (one all-reduce), as DDP would but without averaging:
        the trainer's loss is already scaled to the mean over every process's labelled tokens."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.trainable]
        flat = torch.cat([grad.reshape(-1) for grad in grads])
        dist.all_reduce(flat)
        for parameter, piece in zip(self.trainable, flat.split([grad.numel() for grad in grads])):
            parameter.grad = piece.view_as(parameter)


def uses_fsdp(model: nn.Module, strategy: str) -> bool:
    """Whether ``model`` trains sharded: it does iff it is a hollow base from ``load_training_base``."""
    hollow = shard_source(model) is not None
    if strategy == "fsdp" and not hollow:
        raise MMAdapterError("strategy fsdp shards a base built by load_training_base (meta device, a part loaded "
                             "per process); this model was loaded whole")
    return hollow


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    """The adapter's parameters; fsdp trains LLaMA-Adapter prompts and gates on a frozen base, nothing else."""
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    others = [name for name, _ in trainable if not is_adapter_parameter(name)]
    if not has_adapter(model) or others:
        raise MMAdapterError(f"--strategy fsdp trains the prompts and gates of an attached LLaMA-Adapter on a frozen "
                             f"base; this model trains {others[0] if others else 'no adapter'} (use --strategy ddp)")
    return [p for _, p in trainable]


def _units(model: nn.Module) -> Iterator[nn.Module | list[nn.Module]]:
    """FSDP units, innermost first: the decoder layers, the embeddings with the LM head, then the decoder."""
    yield from decoder_layers(model)
    yield [model.get_input_embeddings(), model.get_output_embeddings()]
    yield model.get_decoder()


def _small_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of what ``to_empty`` would lose and the files do not hold: the adapter and computed buffers."""
    named = [*((n, p) for n, p in model.named_parameters() if p.requires_grad), *model.named_buffers()]
    return {name: tensor.detach().clone() for name, tensor in named}


@torch.no_grad()
def _restore(model: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    named = dict([*model.named_parameters(), *model.named_buffers()])
    for name, value in saved.items():
        named[name].copy_(value)


def _shard(model: nn.Module, trainable: list[nn.Parameter], info: DistInfo, bf16: bool) -> None:
    """Frozen weights to the meta device (the adapter stays), then ``fully_shard`` each unit over all processes,
    on this process's device (named, not FSDP's default: ``--device cpu`` on a machine with GPUs)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    replace_parameters(model, lambda _, p: None if p.requires_grad else nn.Parameter(
        torch.empty(p.shape, dtype=p.dtype, device="meta"), requires_grad=False))
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else None
    mesh = init_device_mesh(info.device.type, (info.world_size,))
    for unit in _units(model):
        fully_shard(unit, mesh=mesh, ignored_params=set(trainable), **({"mp_policy": policy} if policy else {}))
    unsharded = [n for n, p in model.named_parameters() if not p.requires_grad and p.device.type == "meta"
                 and not hasattr(p, "placements")]
    if unsharded:
        raise MMAdapterError(f"{type(model).__name__}: {unsharded[0]} is outside the decoder and the embeddings; "
                             "fsdp cannot shard this architecture (use --strategy ddp)")


def shard_for_training(model: nn.Module, info: DistInfo, bf16: bool) -> ShardedRun:
    """Shard a hollow base with its adapter attached, fill each process's rows from the files (module doc)."""
    source: ShardSource = shard_source(model)
    trainable = _trainable(model)
    saved = _small_state(model)
    _shard(model, trainable, info, bf16)
    model.to_empty(device=info.device)  # every tensor, the adapter and buffers too: those come back just below
    _restore(model, saved)
    local, total = load_local_shards(model, source, info.rank, info.world_size)
    return ShardedRun(export_view(model), trainable, local, total)


def _fingerprinted(model: nn.Module) -> list[nn.Module]:
    """The modules whose weights ``adapter_file.base_fingerprint`` samples, in its order."""
    return [model.get_input_embeddings(), *(layer.self_attn.k_proj for layer in decoder_layers(model))]


def _sample(weight: torch.Tensor) -> torch.Tensor:
    """``base_fingerprint``'s strided sample of the whole weight (gathered: a collective on every process)."""
    whole = weight.full_tensor() if hasattr(weight, "full_tensor") else weight
    flat = whole.detach().reshape(-1)
    return flat[::max(1, flat.numel() // _FINGERPRINT_SAMPLES)][:_FINGERPRINT_SAMPLES].to("cpu").clone()


def export_view(model: nn.Module) -> nn.Module:
    """A meta-device model of the same class and config carrying the live adapter modules and, as the weights the
    fingerprint reads, their samples: ``BaseIdentity.of`` and ``save_adapter`` read it without touching a shard."""
    samples = [_sample(module.weight) for module in _fingerprinted(model)]
    with torch.device("meta"):
        view = type(model)(copy.deepcopy(model.config))
    view.requires_grad_(False)
    attach_adapter(view, adapter_config(model))
    for index, module in adaption_prompts(model).items():
        decoder_layers(view)[index].self_attn.adapter = module
    for module, sample in zip(_fingerprinted(view), samples):
        module.weight = nn.Parameter(sample, requires_grad=False)
    setattr(view, BASE_SPEC_ATTR, getattr(model, BASE_SPEC_ATTR, None))
    return view


def checkpoint_activations(model: nn.Module) -> None:
    """Recompute each decoder layer in the backward (transformers' own, which keeps FSDP's gathers outside the
    recomputation); the embeddings' output keeps not requiring grad, so the backward still stops at the lowest
    adapted layer."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise MMAdapterError(f"--activation-checkpointing: {type(model).__name__} does not support it")
    model.activation_checkpointing_enable()
    model.disable_input_require_grads()


def place_model(model: nn.Module, config: TrainConfig, info: DistInfo, bf16: bool,
                validates: bool) -> ShardedRun | None:
    """The model on this process's device: whole (None), or, a hollow base, sharded over the processes with this
    process's part read from the files (in ``bf16`` mixed precision). ``validates``: the caller saves adapters
    during training (refused under fsdp for now)."""
    sharded_base = uses_fsdp(model, config.strategy)
    if sharded_base and validates:  # ScienceQA's validation saves best.safetensors from rank 0 alone
        raise MMAdapterError("--strategy fsdp: validation during training (train scienceqa) is not supported yet: "
                             "rank 0 alone cannot fingerprint a sharded base to save the best adapter; use "
                             "--strategy ddp")
    if config.activation_checkpointing:
        checkpoint_activations(model)
    if not sharded_base:
        model.to(info.device)
        return None
    sharded = shard_for_training(model, info, bf16)
    if info.is_main:
        print(f"fsdp: base sharded over {info.world_size} processes; this one holds {sharded.local_elements:,} of "
              f"its {sharded.base_elements:,} parameters")
    return sharded
