"""Attach LLaMA-Adapter prompts and gates to a frozen transformers decoder.

The learnable state of one adapted layer (an :class:`AdaptionPrompt`) hangs on that layer's
attention module as ``module.adapter``; the registered attention function in ``attention.py``
finds it there. Nothing of the decoder's forward is replaced.

Prompt keys/values are computed once per forward. During cached decoding (no grad, a KV cache
that already holds tokens) the ones computed at prefill are reused, so ``generate`` projects
the prompts once per call, not once per step. With grad enabled they are always recomputed:
a cache across training steps would go stale after every optimizer step.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from mm_adapter.errors import MMAdapterError
from mm_adapter.model import attention
from mm_adapter.model.adapter_v2 import V2State, attach_v2, detach_v2
from mm_adapter.model.config import AdapterConfig, AdapterV2Config
from mm_adapter.model.family import Family, check_layer, resolve_family, text_config

ADAPTER_MARK = ".adapter."


@dataclass
class AdapterRuntime:
    """Per-model state shared by all adapted layers for the current forward."""

    config: AdapterConfig
    layer_indices: list[int]
    inner_attention: str
    family: Family  # resolved once at attach: key norm, head layout, softcap (see family.py)
    reuse_prompt_kv: bool = False
    # Optional (batch, hidden) vector added to every prompt of every adapted layer (the visual path).
    prompt_offset: torch.Tensor | None = None
    hooks: list = field(default_factory=list)
    v2: V2State | None = None  # LLaMA-Adapter V2's bias/scale and trainable norms (adapter_v2.py), when attached


class AdaptionPrompt(nn.Module):
    """Learnable prompts (adapter_len x hidden) and zero-initialised gates for one layer: one per head, or one for
    the whole layer (``gate_granularity="layer"``, PEFT's parameterisation). ``gate_init="random"`` draws the gates
    from N(0, gate_init_std^2) instead (the paper's ablation of zero-init attention)."""

    def __init__(self, hidden_size: int, config: AdapterConfig, runtime: AdapterRuntime,
                 device: torch.device | str | None = None):
        super().__init__()
        self.prompt = nn.Parameter(torch.empty(config.adapter_len, hidden_size, device=device, dtype=torch.float32))
        gates = config.gates_per_layer(runtime.family.heads.num_heads)
        self.gate = nn.Parameter(torch.zeros(gates, device=device, dtype=torch.float32))
        self.gate_activation = config.gate_activation
        if self.prompt.device.type != "meta":
            nn.init.normal_(self.prompt, mean=0.0, std=config.prompt_init_std)
            if config.gate_init == "random":  # the ablation: the model no longer starts as the base model
                nn.init.normal_(self.gate, mean=0.0, std=config.gate_init_std)
        object.__setattr__(self, "runtime", runtime)  # shared, not a submodule
        self.visual = True  # whether the visual offset reaches this layer's prompts (V2: the early layers only)
        self._cached_kv: tuple[torch.Tensor, torch.Tensor] | None = None
        self._cached_offset: torch.Tensor | None = None  # the prompt offset _cached_kv was computed with
        self._cached_gated: tuple[torch.Tensor, torch.Tensor] | None = None  # (key, gate-scaled value)
        self.kv_computations = 0  # observable, so tests can prove the once-per-generate claim

    def activated_gate(self) -> torch.Tensor:
        return attention.activate_gate(self.gate, self.gate_activation)

    def prompt_kv(self, module: nn.Module, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt keys/values through the layer's frozen projections, no rotary, heads repeated as for GQA.

        Keys go through the family's key norm where it has one (Qwen3 normalises keys per head
        before rotary; prompts have no rotary, so the norm is all they get). Shapes: (1 or batch,
        num_heads, adapter_len, head_dim).
        """
        offset = self.runtime.prompt_offset if self.visual else None
        if (self.runtime.reuse_prompt_kv and self._cached_kv is not None and self._cached_kv[0].dtype == dtype
                and self._cached_offset is offset):  # another offset (e.g. rows repeated per option): recompute
            return self._cached_kv
        # fp32 prompts on a bf16 base: cast to the projection's dtype (autocast, if on, casts further).
        prompts = self.prompt.to(module.k_proj.weight.dtype).unsqueeze(0)
        if offset is not None:
            prompts = prompts + offset.to(prompts.dtype).unsqueeze(1)
        family = self.runtime.family
        heads = family.heads
        key = module.k_proj(prompts).unflatten(-1, (heads.num_kv_heads, heads.head_dim))
        if family.key_norm is not None:
            key = getattr(module, family.key_norm)(key)  # present: checked at attach (family.check_layer)
        value = module.v_proj(prompts).unflatten(-1, (heads.num_kv_heads, heads.head_dim))
        key = key.transpose(1, 2).repeat_interleave(heads.kv_groups, dim=1).to(dtype)
        value = value.transpose(1, 2).repeat_interleave(heads.kv_groups, dim=1).to(dtype)
        self.kv_computations += 1
        self._cached_kv = None if torch.is_grad_enabled() else (key, value)
        self._cached_offset = offset
        return key, value

    def gated_kv(self, module: nn.Module, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt keys and gate-scaled values for both paths; without grad, kept as long as :meth:`prompt_kv`
        reuses its keys (under grad nothing is kept: the next optimizer step changes them)."""
        key, value = self.prompt_kv(module, dtype)
        cached = self._cached_gated
        if cached is not None and cached[0] is key:
            return cached
        value = attention.gate_values(value, self.gate, self.gate_activation)
        self._cached_gated = None if torch.is_grad_enabled() else (key, value)
        return key, value


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layer stack of a transformers causal LM (``model.model.layers`` for Llama-likes)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise MMAdapterError(f"{type(model).__name__} has no decoder `layers`; cannot attach an adapter")
    return layers


def _runtime(model: nn.Module) -> AdapterRuntime | None:
    return getattr(model, "_mm_adapter_runtime", None)


def has_adapter(model: nn.Module) -> bool:
    return _runtime(model) is not None


def adapter_config(model: nn.Module) -> AdapterConfig:
    runtime = _runtime(model)
    if runtime is None:
        raise MMAdapterError("this model has no adapter attached")
    return runtime.config


def adapter_v2_state(model: nn.Module) -> V2State | None:
    """The V2 part of the attached adapter (bias/scale layers, trainable norms); None for a v1 adapter or none."""
    runtime = _runtime(model)
    return runtime.v2 if runtime is not None else None


def release_v2(model: nn.Module) -> V2State:
    """Take the V2 part off the attached adapter's record without undoing it (after a merge has made it the base's):
    the adapter is then the prompts and gates alone, and saves and detaches as a v1 adapter."""
    runtime = _runtime(model)
    if runtime is None or runtime.v2 is None:
        raise MMAdapterError("this model's adapter has no V2 part")
    state, runtime.v2 = runtime.v2, None
    return state


def adapter_v2_config(model: nn.Module) -> AdapterV2Config | None:
    """The attached adapter's V2 settings; None for a v1 adapter (or no adapter)."""
    state = adapter_v2_state(model)
    return state.config if state is not None else None


def _cache_holds_tokens(kwargs: dict) -> bool:
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    return cache is not None and hasattr(cache, "get_seq_length") and cache.get_seq_length() > 0


def _device_memory(device: torch.device) -> int | None:
    """Bytes of memory on ``device`` (a GPU's total, the machine's RAM for the CPU); None when unknown (meta)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type == "cpu":
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return None
    return None


def check_prompt_memory(config: AdapterConfig, hidden_size: int, device: torch.device) -> None:
    """Refuse, before allocating, prompts whose training state (fp32 values, gradients and two Adam moments) cannot
    fit in the memory of ``device``: an absurd --adapter-len failed at allocation as "a bug" before."""
    need = 4 * 4 * config.adapter_len * config.adapter_layers * hidden_size
    have = _device_memory(device)
    if have is not None and need > have:
        raise MMAdapterError(f"adapter_len={config.adapter_len} x adapter_layers={config.adapter_layers} prompts of "
                             f"width {hidden_size} need {need / 2**30:,.1f} GiB to train (fp32 values, gradients and "
                             f"optimizer state), more than the {have / 2**30:,.1f} GiB of {device.type} memory here; "
                             "lower --adapter-len or --adapter-layers")


def attach_adapter(model: nn.Module, config: AdapterConfig | None = None,
                   v2: AdapterV2Config | None = None) -> nn.Module:
    """Freeze ``model`` and give its top ``config.adapter_layers`` layers prompts and gates (in place); with ``v2``,
    LLaMA-Adapter V2: also a bias and scale on ``v2.targets`` of every layer and trainable norms."""
    config = config or AdapterConfig()
    if has_adapter(model):
        raise MMAdapterError("this model already has an adapter; call detach_adapter(model) first")
    layers = decoder_layers(model)
    if config.adapter_layers > len(layers):
        raise MMAdapterError(
            f"adapter_layers={config.adapter_layers} but the model has only {len(layers)} decoder layers"
        )
    check_prompt_memory(config, text_config(model.config).hidden_size, layers[-1].self_attn.k_proj.weight.device)
    if v2 is not None and v2.fusion_layers > config.adapter_layers:
        raise MMAdapterError(f"adapter V2 fusion_layers={v2.fusion_layers} (--v2-fusion-layers) but only "
                             f"adapter_layers={config.adapter_layers} layers are adapted")
    inner = attention.inner_name(model.config._attn_implementation or "sdpa")
    family = resolve_family(model.config, inner)
    first = len(layers) - config.adapter_layers
    for index in range(first, len(layers)):
        check_layer(family, index, layers[index])
    registered = attention.register(inner, family.spec)
    model.set_attn_implementation(registered)
    for parameter in model.parameters():
        parameter.requires_grad_(False)

    runtime = AdapterRuntime(config=config, layer_indices=list(range(first, len(layers))), inner_attention=inner,
                             family=family)
    hidden_size = text_config(model.config).hidden_size
    for index in runtime.layer_indices:
        module = layers[index].self_attn
        module.adapter = AdaptionPrompt(hidden_size, config, runtime, device=module.k_proj.weight.device)
        if config.prompt_init == "norm_scaled" and module.adapter.prompt.device.type != "meta":
            norm = getattr(layers[index], family.spec.input_norm)  # present: checked above
            with torch.no_grad():  # the norm multiplies by (offset + weight); Gemma stores weight - 1
                module.adapter.prompt.mul_(family.spec.norm_weight_offset + norm.weight.float())

    if v2 is not None:
        runtime.v2 = attach_v2(model, layers, v2)
        for index in runtime.layer_indices[v2.fusion_layers:]:  # early fusion: images reach the bottom ones only
            layers[index].self_attn.adapter.visual = False
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model

    def decide_reuse(_module, _args, kwargs):
        runtime.reuse_prompt_kv = not torch.is_grad_enabled() and _cache_holds_tokens(kwargs)

    runtime.hooks.append(decoder.register_forward_pre_hook(decide_reuse, with_kwargs=True))
    object.__setattr__(model, "_mm_adapter_runtime", runtime)
    model.save_pretrained = _adapter_only_save(model)  # shadows transformers' method on this instance only
    return model


FolderSaver = Callable[[nn.Module, "str | os.PathLike"], object]
_folder_saver: FolderSaver | None = None


def install_folder_saver(saver: FolderSaver) -> None:
    """Set what ``model.save_pretrained`` writes for an adapted model. The folder layer (``mm_adapter.pretrained``)
    installs its ``save_pretrained`` when it is imported, so this layer never imports the one above it."""
    global _folder_saver
    _folder_saver = saver


def _adapter_only_save(model: nn.Module):
    """``model.save_pretrained`` while an adapter is attached: the adapter folder only, as PEFT saves its adapters.

    transformers' own would write the whole frozen base (hundreds of MB) with the adapter tensors inside and a
    config that loads back as the plain base. Returns None and prints nothing, like transformers' method.
    """
    def save_pretrained(save_directory, is_main_process: bool = True, push_to_hub: bool = False, **_ignored) -> None:
        if push_to_hub:
            raise MMAdapterError("save_pretrained(push_to_hub=True) on an adapted model: save the adapter folder, "
                                 "then call mm_adapter.push_to_hub(folder, repo_id)")
        if _folder_saver is None:
            raise MMAdapterError("model.save_pretrained on an adapted model writes an adapter folder: import "
                                 "mm_adapter.pretrained (or use mm_adapter.save_pretrained) first")
        if is_main_process:
            _folder_saver(model, save_directory)

    return save_pretrained


def detach_adapter(model: nn.Module) -> nn.Module:
    """Remove prompts, gates, hooks (and V2's bias/scale, its norms restored); the model computes exactly its base
    function again."""
    runtime = _runtime(model)
    if runtime is None:
        return model
    for hook in runtime.hooks:
        hook.remove()
    if runtime.v2 is not None:
        detach_v2(runtime.v2)
    layers = decoder_layers(model)
    for index in runtime.layer_indices:
        del layers[index].self_attn.adapter
    model.set_attn_implementation(runtime.inner_attention)
    object.__delattr__(model, "_mm_adapter_runtime")
    model.__dict__.pop("save_pretrained", None)  # transformers' own method again
    return model


def adaption_prompts(model: nn.Module) -> dict[int, AdaptionPrompt]:
    """Adapted layer index (0-based from the bottom) -> its :class:`AdaptionPrompt` module."""
    runtime = _runtime(model)
    if runtime is None:
        return {}
    layers = decoder_layers(model)
    return {index: layers[index].self_attn.adapter for index in runtime.layer_indices}


def adapter_parameters(model: nn.Module) -> dict[int, dict[str, nn.Parameter]]:
    """Adapted layer index -> its live ``prompt`` (adapter_len x hidden) and ``gate`` (n_heads, or 1) parameters."""
    return {index: {"prompt": module.prompt, "gate": module.gate} for index, module in adaption_prompts(model).items()}


def is_adapter_parameter(name: str) -> bool:
    """The trainable-set filter (litgpt style): a parameter belongs to the adapter by its name."""
    return ADAPTER_MARK in f".{name}"


def trainable_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    return ((name, p) for name, p in model.named_parameters() if p.requires_grad)


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for _, p in trainable_parameters(model))


@contextmanager
def prompt_offset(model: nn.Module, offset: torch.Tensor | None):
    """Add a per-sample (batch, hidden) vector to every adaption prompt for the enclosed forwards."""
    runtime = _runtime(model)
    if runtime is None:
        raise MMAdapterError("this model has no adapter attached")
    previous, runtime.prompt_offset = runtime.prompt_offset, offset
    try:
        yield
    finally:
        runtime.prompt_offset = previous
