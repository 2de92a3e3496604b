"""The one trainer for every fine-tuning in the project (Alpaca, ScienceQA text, ScienceQA with images).

What differs between them is only the data: give :func:`train` tokenised examples (see
``batches.py``), a collator turning a list of them into a batch dict, and, when a batch carries
more than text (e.g. image features), a ``forward_loss(model, batch)`` that returns the summed
cross-entropy over the labelled positions. The trainer owns everything else: AdamW over the
parameters that require grad, warmup + half-cycle cosine, accumulation, bf16 autocast, clipping,
activation checkpointing, DDP or FSDP under torchrun (``fsdp.py``: a base built by
``load_training_base(..., strategy fsdp)`` is sharded over the processes), metrics, atomic
checkpoints and exact resume.

SIGINT (Ctrl-C) or SIGTERM (a scheduler's stop) during training ends the run at the next step
boundary with a checkpoint there (:class:`TrainingInterrupted`), so ``--resume`` continues to the
same final adapter as a run never stopped; a second signal stops at once (from the last checkpoint).

The loss of an optimizer step is the mean over every labelled token of the step (all micro-batches,
all ranks), so accumulation and data parallelism give the same update as one big batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mm_adapter.errors import MMAdapterError
from mm_adapter.files.output_folder import Output, outputs_in
from mm_adapter.files.progress import progress
from mm_adapter.model.adapter import adapter_config, has_adapter
from mm_adapter.model.adapter_file import BaseIdentity, save_adapter
from mm_adapter.training.batches import IGNORE_INDEX, BatchPlan, Example, labelled_positions
from mm_adapter.training.checkpoints.format import checkpoint_dirs, save_checkpoint, step_dir
from mm_adapter.training.checkpoints.resume import resume_checkpoint, saved_identity
from mm_adapter.training.config import TrainConfig
from mm_adapter.training.fsdp import ShardedRun, place_model
from mm_adapter.training.metrics_log import METRICS_NAME, PLOT_NAME, MetricsLog
from mm_adapter.training.process import (
    DistInfo, TrainingInterrupted, check_world_fits, maybe_kill, peak_memory_mb, setup_distributed, stop_requests,
)

ForwardLoss = Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]
Collate = Callable[[Sequence[Example]], dict[str, torch.Tensor]]
ADAPTER_NAME, CHECKPOINTS = "adapter.safetensors", "checkpoints"


@dataclass
class TrainResult:
    steps: int
    last_loss: float | None
    out_dir: Path
    adapter_path: Path | None


class TrainingDiverged(MMAdapterError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def lm_loss_sum(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed next-token cross-entropy, with the LM head applied only to rows that carry a label."""
    hidden = model.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 use_cache=False).last_hidden_state
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE_INDEX
    logits = model.lm_head(hidden[:, :-1][keep])
    return F.cross_entropy(logits.float(), labels[keep], reduction="sum")


class _LossModule(nn.Module):
    """Puts ``forward_loss`` behind ``forward`` so DistributedDataParallel sees (and syncs) the call."""

    def __init__(self, model: nn.Module, forward_loss: ForwardLoss):
        super().__init__()
        self.model, self.forward_loss = model, forward_loss

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.forward_loss(self.model, batch)


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Linear warmup to 1, then half-cycle cosine down to ``min_ratio`` (the original's schedule)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def effective_lr(config: TrainConfig, world_size: int) -> float:
    effective_batch = config.batch_size * config.accum_steps * world_size
    return config.lr if config.lr is not None else config.base_lr * effective_batch / 256


LrScales = Mapping[nn.Parameter, float]


def build_optimizer(model: nn.Module, config: TrainConfig, lr: float,
                    lr_scales: LrScales | None = None) -> torch.optim.AdamW:
    """AdamW over parameters that require grad; 1-D ones (gates, biases, norms) without weight decay, like timm's.

    ``lr_scales`` gives some parameters ``lr * scale`` (the visual projection: its first layer reads
    thousands of features, so the prompts' lr moves its outputs far too much; see
    ``multimodal.projection_lr_scales``). Groups of scale 1 come first, in the order they always
    had (group 0's lr is the one logged).
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise MMAdapterError("the model has no parameters that require grad; attach an adapter first")
    given = {id(p): float(scale) for p, scale in (lr_scales or {}).items()}
    scale_of = {id(p): given.get(id(p), 1.0) for p in trainable}
    scales = sorted(set(scale_of.values()), key=lambda s: (s != 1.0, s))
    groups = []
    for scale in scales:
        mine = [p for p in trainable if scale_of[id(p)] == scale]
        extra = {} if scale == 1.0 else {"lr": lr * scale}
        groups += [{"params": [p for p in mine if p.ndim >= 2], "weight_decay": config.weight_decay, **extra},
                   {"params": [p for p in mine if p.ndim < 2], "weight_decay": 0.0, **extra}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=tuple(config.betas))


def data_fingerprint(examples: Sequence[Example]) -> str:
    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps([list(example["input_ids"]), list(example["labels"])]).encode())
    return digest.hexdigest()[:16]


def run_identity(model: nn.Module, examples: Sequence[Example], config: TrainConfig, world_size: int,
                 extra: dict[str, Any] | None) -> dict[str, Any]:
    """Everything that shapes the trajectory; a checkpoint resumes only under an equal identity."""
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in TrainConfig.NON_IDENTITY}
    if settings["max_steps"] is None:  # absent, as in checkpoints written before --max-steps, which still resume
        del settings["max_steps"]
    identity = {**json.loads(json.dumps(settings)), "micro_batches_per_step": config.accum_steps * world_size,
                "data": data_fingerprint(examples),
                "trainable": {n: list(p.shape) for n, p in model.named_parameters() if p.requires_grad}}
    if has_adapter(model):
        identity["adapter"] = adapter_config(model).to_dict()
        identity["base"] = dataclasses.asdict(BaseIdentity.of(model))
    return identity | (extra or {})


def trainer_outputs(out_dir: str | Path, flag: str = "--out") -> list[Output]:
    """Every path :func:`train` writes in ``out_dir`` (checkpoints/ it prunes as a whole), for the input check."""
    return outputs_in(flag, out_dir, [ADAPTER_NAME, METRICS_NAME, PLOT_NAME], folders=[CHECKPOINTS])


def check_out_dir(out_dir: str | Path) -> None:
    """Refuse a path that is a file, or whose nearest existing folder is read-only, without creating anything."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise MMAdapterError(f"{out_dir}: output path exists and is not a folder")
    existing = next(p for p in (out_dir, *out_dir.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise MMAdapterError(f"{out_dir}: output folder is not writable ({existing} is "
                             f"{'not a folder' if not existing.is_dir() else 'read-only'})")


def check_run_state(out_dir: str | Path, resume: bool) -> None:
    """A fresh run needs a folder without a run; ``resume`` needs a checkpoint there."""
    out_dir = Path(out_dir)
    if resume and not checkpoint_dirs(out_dir / CHECKPOINTS):
        raise MMAdapterError(f"{out_dir}: no checkpoint to resume from (expected {out_dir / CHECKPOINTS}/step-*)")
    if not resume and (checkpoint_dirs(out_dir / CHECKPOINTS) or (out_dir / ADAPTER_NAME).exists()):
        raise MMAdapterError(f"{out_dir}: already holds a run; pass --resume to continue it or choose another folder")


def prepare_out_dir(out_dir: str | Path, resume: bool, is_main: bool) -> None:
    """Refuse an unwritable folder or one holding another run, before anything is written (jobs check the
    same earlier without creating anything: :func:`check_out_dir`, :func:`check_run_state`)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise MMAdapterError(f"{out_dir}: output path exists and is not a folder")
    check_run_state(out_dir, resume)
    if not is_main:
        return
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise MMAdapterError(f"{out_dir}: output folder is not writable ({error.strerror or error})") from None


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def bf16_supported(device: torch.device) -> bool:
    return device.type == "cpu" or (device.type == "cuda" and torch.cuda.is_bf16_supported())


def _optimizer_and_schedule(model: nn.Module, config: TrainConfig, plan: BatchPlan, world_size: int,
                            lr_scales: LrScales | None):
    """AdamW and its warmup + half-cycle cosine schedule, in optimizer steps of this plan."""
    lr = effective_lr(config, world_size)
    optimizer = build_optimizer(model, config, lr, lr_scales)
    warmup = min(plan.total_steps, round(config.warmup_epochs * plan.batches_per_epoch / plan.per_step))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(
        lr_factor, warmup_steps=warmup, total_steps=plan.total_steps, min_ratio=config.min_lr / lr if lr else 0.0))
    return optimizer, scheduler


def _backward_step(module: nn.Module, batches: Iterable[dict[str, torch.Tensor]], count: int, n_labels: int,
                   info: DistInfo, use_bf16: bool, sharded: ShardedRun | None) -> torch.Tensor:
    """Forward and backward of this rank's micro-batches of one optimizer step (gradients synced once, at the
    last); returns the (loss sum, real tokens) of the step over all ranks."""
    ddp = isinstance(module, nn.parallel.DistributedDataParallel)
    # DDP averages gradients over ranks, FSDP's all-reduce sums them: either way the result is the mean over all
    # labelled tokens of the step.
    scale = (info.world_size if ddp else 1) / n_labels
    totals = torch.zeros(2, dtype=torch.float64, device=info.device)
    for micro, batch in enumerate(batches):
        no_sync = module.no_sync() if ddp and micro < count - 1 else contextlib.nullcontext()
        with no_sync:
            with _autocast(info.device, use_bf16):
                loss_sum = module(batch)
            (loss_sum * scale).backward()
        totals += torch.stack([loss_sum.detach().double(), batch["attention_mask"].sum().double()])
    if sharded is not None:
        sharded.sync_gradients()
    if info.world_size > 1:
        dist.all_reduce(totals)
    return totals


@contextlib.contextmanager
def _closed_after(bar: Any, log: MetricsLog | None) -> Iterator[None]:
    """Close the progress bar and the metrics log however the training loop ends."""
    try:
        yield
    finally:
        bar.close()
        if log is not None:
            log.close()


def _refuse_non_finite(loss: float, step: int, out_dir: Path) -> None:
    if not math.isfinite(loss):
        kept = checkpoint_dirs(out_dir / CHECKPOINTS)
        where = f"last good checkpoint {kept[-1]}" if kept else "no checkpoint was written yet"
        raise TrainingDiverged(f"loss is {loss} at step {step + 1}; stopped ({where}); "
                               "try a lower learning rate or --grad-clip")


def train(model: nn.Module, examples: Sequence[Example], config: TrainConfig, collate: Collate,
          out_dir: str | Path, *, device: str | None = None, forward_loss: ForwardLoss = lm_loss_sum,
          export: Callable[[nn.Module, Path], Any] | None = save_adapter,
          identity: dict[str, Any] | None = None, lr_scales: LrScales | None = None,
          on_step_end: Callable[[int, float, nn.Module], dict[str, Any] | None] | None = None) -> TrainResult:
    """Train the parameters of ``model`` that require grad on ``examples``; see the module docstring.

    ``out_dir`` receives the adapter, metrics and checkpoints; ``device`` (default: cuda if
    available, else cpu; under torchrun the local rank's) is where the model trains.
    ``export(model, path)`` writes the final result (default: :func:`save_adapter`; under fsdp it
    gets ``fsdp.export_view``: the live adapter on a meta-device copy of the base that carries its
    fingerprint); ``identity`` adds caller facts that must match on resume (e.g. a visual encoder's
    name); ``on_step_end(step, epoch, model)`` runs on every rank after each optimizer step and may
    return metrics to log (not under fsdp yet).
    """
    info = setup_distributed(device)
    out_dir = Path(out_dir)
    prepare_out_dir(out_dir, config.resume, info.is_main)
    plan = BatchPlan([len(e["input_ids"]) for e in examples], config.batch_size, config.seed, config.epochs,
                     info.world_size, config.accum_steps, config.group_batches, config.max_steps)
    if plan.total_steps == 0:
        raise MMAdapterError(f"{len(examples)} examples make no full optimizer step of "
                             f"{plan.per_step} micro-batches of {config.batch_size}")
    if config.resume:
        check_world_fits(saved_identity(out_dir / CHECKPOINTS), config, info.world_size)
    use_bf16 = config.bf16 and bf16_supported(info.device)
    if config.bf16 and not use_bf16 and info.is_main:
        print(f"bf16 autocast is not supported on {info.device}; training in the model's dtype")
    sharded = place_model(model, config, info, use_bf16, validates=on_step_end is not None)
    view = sharded.view if sharded else model  # what the run identity and the exported adapter read
    label_counts = [labelled_positions(e) for e in examples]
    optimizer, scheduler = _optimizer_and_schedule(model, config, plan, info.world_size, lr_scales)
    ident = run_identity(view, examples, config, info.world_size, identity)
    start = 0
    if config.resume:
        start = resume_checkpoint(out_dir / CHECKPOINTS, model, optimizer, scheduler, ident).step
    else:
        torch.manual_seed(config.seed + info.rank)
    module = _LossModule(model, forward_loss)
    if info.world_size > 1 and sharded is None:
        device_ids = [info.device.index] if info.device.type == "cuda" else None
        module = nn.parallel.DistributedDataParallel(module, device_ids=device_ids, broadcast_buffers=False)
    log = MetricsLog(out_dir, start if config.resume else None) if info.is_main else None
    bar = progress(plan.total_steps, "train", enabled=info.is_main and config.progress, initial=start, unit="step")
    trainable = [p for p in model.parameters() if p.requires_grad]
    last_loss, started = None, time.perf_counter()

    def save(done: int) -> None:
        save_checkpoint(out_dir / CHECKPOINTS, done, model, optimizer, scheduler, ident,
                        extra={"epoch": plan.epoch_of(done), "micro_batches_done": done * plan.per_step},
                        keep=config.keep_checkpoints)
        log.plot()

    model.train()
    with _closed_after(bar, log), stop_requests(info.is_main) as stop:
        for step in range(start, plan.total_steps):
            tick = time.perf_counter()
            step_batches = plan.step_batches(step)
            n_labels = max(1, sum(label_counts[i] for batch in step_batches for i in batch))
            mine = step_batches[info.rank * config.accum_steps:(info.rank + 1) * config.accum_steps]
            batches = (_to_device(collate([examples[i] for i in indices]), info.device) for indices in mine)
            totals = _backward_step(module, batches, len(mine), n_labels, info, use_bf16, sharded)
            loss = totals[0].item() / n_labels
            _refuse_non_finite(loss, step, out_dir)
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
            step_lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            done, last_loss = step + 1, loss
            now, tokens = time.perf_counter(), int(totals[1].item())
            record = {"step": done, "epoch": round(plan.epoch_of(done), 4), "loss": loss, "lr": step_lr,
                      "tokens": tokens, "tokens_per_s": round(tokens / max(now - tick, 1e-9), 1),
                      "step_s": round(now - tick, 4), "elapsed_s": round(now - started, 2),
                      "peak_mb": round(peak_memory_mb(info.device), 1)}
            if on_step_end is not None:
                record |= on_step_end(done, plan.epoch_of(done), model) or {}
            if log is not None:
                log.write(record)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{step_lr:.2e}", tok_s=f"{record['tokens_per_s']:.0f}",
                                refresh=False)
                bar.update(1)
            due = done % config.checkpoint_every == 0 or done == plan.total_steps
            if log is not None and due:
                save(done)
            maybe_kill(done)
            stopped_by = stop.agreed(info) if done < plan.total_steps else 0  # the last step just finishes the run
            if stopped_by:
                if log is not None and not due:
                    save(done)
                raise TrainingInterrupted(stopped_by, done, plan.total_steps, step_dir(out_dir / CHECKPOINTS, done))
    model.eval()
    adapter_path = None
    if info.is_main and export is not None:
        adapter_path = out_dir / ADAPTER_NAME
        export(view, adapter_path)
    return TrainResult(plan.total_steps, last_loss, out_dir, adapter_path)


@torch.no_grad()
def evaluate_loss(model: nn.Module, examples: Sequence[Example], collate: Collate, batch_size: int = 8,
                  forward_loss: ForwardLoss = lm_loss_sum, bf16: bool = True) -> float:
    """Mean loss per labelled token over ``examples`` (length-sorted batches: deterministic, little padding)."""
    device = next(model.parameters()).device
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))
    total, count = 0.0, sum(labelled_positions(e) for e in examples)
    was_training = model.training
    model.eval()
    for start in range(0, len(order), batch_size):
        batch = _to_device(collate([examples[i] for i in order[start:start + batch_size]]), device)
        with _autocast(device, bf16 and bf16_supported(device)):
            total += forward_loss(model, batch).double().item()
    model.train(was_training)
    return total / max(1, count)
