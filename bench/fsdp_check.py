"""FSDP check: one training step with the base sharded over the processes of a torchrun launch, against the same
step in one process holding the whole base. Loss and every adapter gradient are compared.

Both sides run the trainer's own pieces: ``load_training_base`` (a hollow base, strategy fsdp), the job's seeded
``attach_adapter``, ``fsdp.place_model`` (sharding, each process reading its rows), ``lm_loss_sum`` under the
trainer's bf16 autocast, and the adapter's gradient all-reduce; the reference is ``load_base`` + the same adapter on
rank 0 over the whole global batch. Gates are set to seeded random values first (zero-init gates would give the
prompts no gradient to compare).

Variants (``--variants``, each optionally with ``-ac``: activation checkpointing):

| variant | sharded base | compute | reference |
|---|---|---|---|
| ``bf16`` | bf16 weights | bf16 autocast, FSDP's bf16 MixedPrecisionPolicy (no cast) | bf16 weights, autocast |
| ``mixed`` | fp32 weights | the same policy: units gathered as bf16 copies | bf16 copies, autocast |
| ``fp32`` | fp32 weights | fp32, no autocast, no policy | fp32 weights |

Tolerances, of the largest gradient and of the loss: fp32 1e-5, bf16 and mixed 2e-2 (bf16 keeps 8 bits and the two
sides sum the batch in different orders). One JSON line per variant: both losses, the largest gradient difference
and gradient, the dtype a sharded layer computed with, the base's bf16 size, the most GPU memory one process held,
and ``ok``. Exit status 1 when a variant is off.

On GPUs (one per process; the reference needs the whole base on rank 0's GPU, so pick a base that fits one, e.g.
a 7B in bf16 on 80 GB; the per-process peak against the base's size shows the sharding):
    torchrun --nproc_per_node 8 -m bench.fsdp_check --base /data/llama-7b-hf
On CPU with gloo (tests/test_fsdp.py runs it on a tiny base):
    torchrun --nproc_per_node 2 -m bench.fsdp_check --base DIR --variants fp32-ac,mixed,bf16
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.distributed as dist

from mm_adapter import AdapterConfig, attach_adapter, load_base
from mm_adapter.model.adapter import adapter_parameters, decoder_layers
from mm_adapter.training.base_loading import load_training_base, shard_source
from mm_adapter.training.config import TrainConfig
from mm_adapter.training.fsdp import place_model
from mm_adapter.training.process import setup_distributed
from mm_adapter.training.trainer import lm_loss_sum

# variant -> (sharded weights, bf16 compute, reference weights)
VARIANTS = {"bf16": ("bf16", True, "bf16"), "mixed": ("fp32", True, "bf16"), "fp32": ("fp32", False, "fp32")}
TOLERANCE = {True: 2e-2, False: 1e-5}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="a transformers folder with safetensors weights (or a hub id)")
    parser.add_argument("--variants", default="bf16,bf16-ac", help="comma-separated: bf16, mixed, fp32, each with -ac")
    parser.add_argument("--batch", type=int, default=2, help="rows per process")
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--adapter-len", type=int, default=10)
    parser.add_argument("--adapter-layers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    unknown = [v for v in args.variants.split(",") if v.removesuffix("-ac") not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant {unknown[0]!r}")
    return args


def adapted(model, args: argparse.Namespace):
    """The job's seeded adapter, gates then set to seeded random values (the same on every process)."""
    torch.manual_seed(args.seed)
    attach_adapter(model, AdapterConfig(adapter_len=args.adapter_len, adapter_layers=args.adapter_layers))
    generator = torch.Generator().manual_seed(args.seed + 1)
    with torch.no_grad():
        for entry in adapter_parameters(model).values():
            entry["gate"].copy_(torch.randn(entry["gate"].shape, generator=generator))
    return model


def global_batch(vocab: int, rows: int, args: argparse.Namespace) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(args.seed + 2)
    ids = torch.randint(0, vocab, (rows, args.seq), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def backward(model, batch: dict[str, torch.Tensor], labels: int, device: torch.device, bf16: bool) -> float:
    """The summed loss over ``batch``; its gradients are those of the mean over ``labels`` labelled tokens."""
    model.train()
    batch = {key: value.to(device) for key, value in batch.items()}
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = lm_loss_sum(model, batch)
    (loss / labels).backward()
    return loss.item()


def trainable_grads(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().float().cpu() for name, p in model.named_parameters() if p.requires_grad}


def sharded_step(args: argparse.Namespace, variant: str, info, batch, labels: int) -> dict:
    """The FSDP side: every process its rows of the global batch."""
    weights, bf16, _ = VARIANTS[variant.removesuffix("-ac")]
    config = TrainConfig(strategy="fsdp", bf16=bf16, activation_checkpointing=variant.endswith("-ac"))
    model, _ = load_training_base(args.base, weights, config)
    size = shard_source(model).bf16_bytes()
    sharded = place_model(adapted(model, args), config, info, bf16, validates=False)
    seen = []  # the dtype the top layer's projections compute with (FSDP's gathered weights)
    decoder_layers(model)[-1].self_attn.register_forward_pre_hook(lambda m, _: seen.append(str(m.k_proj.weight.dtype)))
    mine = {key: value[info.rank * args.batch:(info.rank + 1) * args.batch] for key, value in batch.items()}
    total = torch.tensor([backward(model, mine, labels, info.device, bf16)], dtype=torch.float64, device=info.device)
    sharded.sync_gradients()
    dist.all_reduce(total)
    return {"loss": total.item(), "grads": trainable_grads(model), "size": size, "gathered": seen[0]}


def reference_step(args: argparse.Namespace, variant: str, device: torch.device, batch,
                   labels: int) -> tuple[float, dict]:
    """One process, the whole base, the whole global batch (rank 0 only)."""
    _, bf16, weights = VARIANTS[variant.removesuffix("-ac")]
    model, _ = load_base(args.base, dtype=weights)
    adapted(model, args).to(device)
    loss = backward(model, batch, labels, device, bf16)
    return loss, trainable_grads(model)


def peak_gib(device: torch.device) -> float | None:
    """The most GPU memory any process held (None on CPU)."""
    if device.type != "cuda":
        return None
    peak = torch.tensor([torch.cuda.max_memory_allocated(device)], dtype=torch.float64, device=device)
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    return round(peak.item() / 2**30, 3)


def compare(variant: str, sharded: dict, reference: tuple[float, dict], peak: float | None) -> dict:
    (ref_loss, ref_grads), grads = reference, sharded["grads"]
    largest = max(g.abs().max().item() for g in ref_grads.values())
    diff = max((grads[name] - ref_grads[name]).abs().max().item() for name in ref_grads)
    tolerance = TOLERANCE[VARIANTS[variant.removesuffix("-ac")][1]]
    loss_diff = abs(sharded["loss"] - ref_loss) / max(abs(ref_loss), 1e-12)
    return {"variant": variant, "loss_fsdp": sharded["loss"], "loss_single": ref_loss, "loss_rel_diff": loss_diff,
            "grad_max_abs_diff": diff, "grad_max_abs": largest, "tolerance": tolerance,
            "gathered_dtype": sharded["gathered"], "base_bytes_bf16": sharded["size"], "peak_gib_per_process": peak,
            "ok": grads.keys() == ref_grads.keys() and diff <= tolerance * largest and loss_diff <= tolerance}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = setup_distributed()
    if info.world_size < 2:
        print("run it under torchrun --nproc_per_node N (N >= 2)", file=sys.stderr)
        return 2
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(args.base).get_text_config().vocab_size
    batch = global_batch(vocab, args.batch * info.world_size, args)
    labels = batch["labels"][:, 1:].numel()
    failed = False
    for variant in args.variants.split(","):
        sharded = sharded_step(args, variant, info, batch, labels)
        peak = peak_gib(info.device)
        if info.is_main:
            row = compare(variant, sharded, reference_step(args, variant, info.device, batch, labels), peak)
            print(json.dumps(row), flush=True)
            failed |= not row["ok"]
        dist.barrier()
    dist.destroy_process_group()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
