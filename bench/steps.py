"""The training steps the step benchmarks compare, each built on its own copy of one base.

* ``ours``: the trainer's inner loop (``lm_loss_sum``: LM head only at labelled positions), AdamW.
* ``peft``: PEFT ``AdaptionPrompt`` (same adapter_len/layers) run as its users run it:
  ``model(**batch, labels=...)``, which computes logits at every position, then AdamW.
* ``frozen-routed``: the same through our registered attention function with no adapter attached (the
  token-block kernels ours uses, no prompts): what the adapter itself adds.
* ``frozen``: the base with no adapter, forward + activation backward of the same batch and the same
  loss as ours (gradient w.r.t. the input embeddings, so the backward crosses every layer): the floor
  an adapter step cannot beat by much, since the prompts' gradient needs that whole backward.
* ``full``: full fine-tuning, every base parameter trainable, the same loss as ours, AdamW over all of
  them. Mixed precision as full fine-tuning is run: fp32 weights (the master copy) under bf16 autocast
  for ``bf16``, so each parameter costs 16 bytes (weight, gradient, two moments). Not in
  ``VARIANTS`` (``bench.step_vs_peft``'s set): ``bench.full_ft`` and ``bench.gpu_suite`` time it.

bf16 means bf16 base weights under bf16 autocast (the trainer's default precision); fp32 means fp32
weights without autocast. Each step function carries its optimizer as ``step.optimizer`` (None for the
frozen variants), so a benchmark can measure the optimizer state.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mm_adapter import AdapterConfig, attach_adapter
from mm_adapter.model import attention
from mm_adapter.training.batches import IGNORE_INDEX
from mm_adapter.training.config import TrainConfig
from mm_adapter.training.trainer import build_optimizer, lm_loss_sum

VARIANTS = ("ours", "peft", "frozen", "frozen-routed")
ALL_VARIANTS = (*VARIANTS, "full")
Batch = dict[str, torch.Tensor]
Step = Callable[[Batch], torch.Tensor]


def dtype_of(name: str) -> torch.dtype:
    return {"bf16": torch.bfloat16, "fp32": torch.float32}[name]


def autocast(model: nn.Module, dtype: torch.dtype):
    """bf16 autocast for a bf16 model (as the trainer runs), nothing for fp32."""
    if dtype == torch.bfloat16:
        return torch.autocast(next(model.parameters()).device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def n_labels(batch: Batch) -> int | torch.Tensor:
    """Labelled positions; a batch may carry them precomputed (``n_labels``), as the trainer takes them from its plan."""
    if "n_labels" in batch:
        return batch["n_labels"]
    return max(1, int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()))


def peft_model(base: nn.Module, adapter_len: int, adapter_layers: int) -> nn.Module:
    from peft import AdaptionPromptConfig, get_peft_model

    config = AdaptionPromptConfig(adapter_len=adapter_len, adapter_layers=adapter_layers, task_type="CAUSAL_LM")
    return get_peft_model(base, config)


def _optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> torch.Tensor:
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def _loss_step(model: nn.Module, optimizer: torch.optim.Optimizer, dtype: torch.dtype) -> Step:
    """The trainer's inner loop: ``lm_loss_sum`` (LM head at labelled positions only), mean over labels, AdamW."""
    def step(batch: Batch) -> torch.Tensor:
        with autocast(model, dtype):
            loss = lm_loss_sum(model, batch) / n_labels(batch)
        return _optimizer_step(model, optimizer, loss)
    return step


def _frozen_step(model: nn.Module, dtype: torch.dtype) -> Step:
    """Forward + activation backward to the input embeddings, same loss as ours, no parameter gradients."""
    def step(batch: Batch) -> torch.Tensor:
        embeds = model.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_()
        with autocast(model, dtype):
            hidden = model.get_decoder()(inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                                         use_cache=False).last_hidden_state
            labels = batch["labels"][:, 1:]
            keep = labels != IGNORE_INDEX
            logits = model.lm_head(hidden[:, :-1][keep])
            loss = F.cross_entropy(logits.float(), labels[keep], reduction="sum") / n_labels(batch)
        loss.backward()
        return loss.detach()
    return step


def build_step(variant: str, base: nn.Module, dtype: torch.dtype, adapter_len: int = 10,
               adapter_layers: int = 30, copy_base: bool = True) -> tuple[nn.Module, Step]:
    """A fresh model of ``variant`` on (a copy of) ``base`` in ``dtype`` and its one-step function."""
    weights = torch.float32 if variant == "full" else dtype  # full fine-tuning keeps fp32 master weights
    model = (copy.deepcopy(base) if copy_base else base).to(weights)
    torch.manual_seed(0)
    optimizer = None
    if variant == "ours":
        attach_adapter(model, AdapterConfig(adapter_len, adapter_layers))
        model.train()
        optimizer = build_optimizer(model, TrainConfig(), 1e-3)
        step = _loss_step(model, optimizer, dtype)
    elif variant == "full":
        model.requires_grad_(True)
        model.train()
        optimizer = build_optimizer(model, TrainConfig(), 1e-5)
        step = _loss_step(model, optimizer, dtype)
    elif variant == "peft":
        model = peft_model(model, adapter_len, adapter_layers)
        model.train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, betas=(0.9, 0.95))

        def step(batch: Batch) -> torch.Tensor:
            with autocast(model, dtype):
                loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             labels=batch["labels"]).loss
            return _optimizer_step(model, optimizer, loss)
    elif variant in ("frozen", "frozen-routed"):
        model.requires_grad_(False)
        model.train()
        if variant == "frozen-routed":  # our attention function with no adapter: same kernels as ours, no prompts
            model.set_attn_implementation(attention.register(attention.inner_name(model.config._attn_implementation)))
        step = _frozen_step(model, dtype)
    else:
        raise ValueError(f"variant must be one of {ALL_VARIANTS}, got {variant!r}")
    step.optimizer = optimizer
    return model, step


def memory_child(args, base: nn.Module, tokenizer) -> None:
    """A ``--memory-of VARIANT`` child of a step benchmark: that variant alone, on ``base`` itself, over the batches
    of ``args.shapes[0]`` in ``args.dtypes[0]``; prints its peak memory (``bench.common.report_memory``)."""
    from bench.batches import load_batches
    from bench.common import report_memory

    batches = load_batches(args.shapes[0], tokenizer, base.config.vocab_size, args.batch, args.batches, args.seq)
    _, step = build_step(args.memory_of, base, dtype_of(args.dtypes[0]), args.adapter_len, args.adapter_layers,
                         copy_base=False)
    report_memory(lambda: [step(b) for b in batches])


def optimizer_state_bytes(optimizer: torch.optim.Optimizer | None) -> int:
    """Bytes of the optimizer's state tensors (AdamW: two moments per trainable parameter, after its first step)."""
    if optimizer is None:
        return 0
    return sum(value.numel() * value.element_size() for state in optimizer.state.values()
               for value in state.values() if torch.is_tensor(value) and value.ndim > 0)
