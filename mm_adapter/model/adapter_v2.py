"""LLaMA-Adapter V2's additions on a frozen base: a bias and scale on chosen linear layers, trainable norms.

``y = s * (W x + b)`` per output feature (b = 0, s = 1 at the start: the model is still exactly the base), as
litgpt's ``AdapterV2Linear`` and the official V2 release have it. Like the prompts, nothing of the base is
replaced: each chosen ``nn.Linear`` gets a :class:`BiasScale` child named ``adapter`` (so its parameters match
``is_adapter_parameter``) and a forward hook that applies it to the layer's output, so module names, the base
fingerprint and the prompt path (which projects prompts through the same, now adapted, ``k_proj``/``v_proj``, as
litgpt does) stay as they are. Trainable norms are the base's own weights: their values at attach are kept, and
:func:`detach_v2` puts them back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from mm_adapter.errors import MMAdapterError
from mm_adapter.model.config import ALL_LINEAR, AdapterV2Config

V2_PREFIX = "adapter_v2."  # tensor names in an adapter file: adapter_v2.<module name>.bias|scale|weight


class BiasScale(nn.Module):
    """One linear layer's learnable ``bias`` (zeros) and ``scale`` (ones) over its output features, fp32."""

    def __init__(self, features: int, device: torch.device | str | None = None):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(features, device=device, dtype=torch.float32))
        self.scale = nn.Parameter(torch.ones(features, device=device, dtype=torch.float32))

    def forward(self, output: torch.Tensor) -> torch.Tensor:
        """``s * (output + b)`` in the output's dtype: at b = 0, s = 1 every value comes back bit for bit."""
        return (output + self.bias.to(output.dtype)) * self.scale.to(output.dtype)


def _apply_bias_scale(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    return module.adapter(output)


def _keep_input_dtype(_module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    """A trained norm's weight is fp32 on a bf16 base (AdamW steps vanish in bf16), and ``weight * x`` would then
    turn the hidden states fp32, which the base's bf16 linear layers refuse outside autocast: cast back. The base's
    own bf16 product rounds the same fp32 product, so an untouched weight gives the same values."""
    dtype = inputs[0].dtype if inputs and isinstance(inputs[0], torch.Tensor) else output.dtype
    return output if output.dtype == dtype else output.to(dtype)


@dataclass
class V2State:
    """What :func:`attach_v2` added to one model, so :func:`detach_v2` can take it all back."""

    config: AdapterV2Config
    linears: dict[str, nn.Module]  # module name in the model -> the linear layer that got a BiasScale
    norms: dict[str, nn.Module]  # module name -> a normalisation layer whose weight trains
    original_norms: dict[str, torch.Tensor] = field(default_factory=dict)  # its weight as it was at attach
    hooks: list = field(default_factory=list)  # the norms' dtype hooks
    linear_hooks: dict = field(default_factory=dict)  # module name -> its bias/scale hook (off while merged)
    merged: dict = field(default_factory=dict)  # name -> (weight parameter, bias data or None) before merge_v2


def target_linears(model: nn.Module, layers: nn.ModuleList, config: AdapterV2Config) -> dict[str, nn.Module]:
    """The linear layers of the decoder layers that ``config.targets`` names (and the output layer with
    ``config.head``), by their module name in ``model``; a target name no decoder layer has is one line naming it and
    the names there are."""
    inside = {id(module) for layer in layers for module in layer.modules()}
    linears = {name: module for name, module in model.named_modules()
               if isinstance(module, nn.Linear) and id(module) in inside}
    wanted = config.target_names
    if wanted != (ALL_LINEAR,):
        present = sorted({name.rsplit(".", 1)[-1] for name in linears})
        for target in wanted:
            if target not in present:
                raise MMAdapterError(f"adapter V2 target {target!r} (--v2-targets) is no linear layer of this base's "
                                     f"decoder layers; they have {', '.join(present)} (or give {ALL_LINEAR})")
        linears = {name: module for name, module in linears.items() if name.rsplit(".", 1)[-1] in wanted}
    return linears | (output_head(model) if config.head else {})


def output_head(model: nn.Module) -> dict[str, nn.Module]:
    """The output layer by its module name (``{"lm_head": ...}``), for ``AdapterV2Config.head``; one line where the
    model's output embeddings are no linear layer."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, nn.Linear):
        raise MMAdapterError(f"adapter V2 head=True needs a linear output layer; this {type(model).__name__} has "
                             f"{type(head).__name__}")
    return {name: module for name, module in model.named_modules() if module is head}


def norm_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every normalisation layer with a weight (``*Norm`` classes: RMSNorm, LayerNorm), by module name."""
    return {name: module for name, module in model.named_modules()
            if "Norm" in type(module).__name__ and isinstance(getattr(module, "weight", None), nn.Parameter)}


def attach_v2(model: nn.Module, layers: nn.ModuleList, config: AdapterV2Config) -> V2State:
    """Give the chosen linear layers of ``model`` (already frozen) a bias and scale, and make its norms trainable."""
    linears = target_linears(model, layers, config)
    state = V2State(config, linears, norm_modules(model) if config.train_norms else {})
    for name, module in linears.items():
        module.adapter = BiasScale(module.out_features, device=module.weight.device)
        hook_bias_scale(state, name)
    for name, module in state.norms.items():
        if module.weight.device.type != "meta":
            state.original_norms[name] = module.weight.detach().clone()
        module.weight.requires_grad_(True)
        state.hooks.append(module.register_forward_hook(_keep_input_dtype))
    return state


def hook_bias_scale(state: V2State, name: str) -> None:
    """Make linear layer ``name`` apply its bias/scale child to its output (at attach, and again at unmerge)."""
    state.linear_hooks[name] = state.linears[name].register_forward_hook(_apply_bias_scale)


def restore_linears(state: V2State) -> list[str]:
    """Put back the weights (and bias, or none) each merged linear layer had before the merge, exactly (the
    originals were kept, not divided back); returns the layers restored. Here, not in v2_merge, so detaching a merged
    adapter needs nothing from the module that builds on this one."""
    restored = list(state.merged)
    for name, (weight, bias) in state.merged.items():
        module = state.linears[name]
        module.weight = weight  # the parameter itself: a head tied to the input embeddings is tied again
        if bias is None:
            module.register_parameter("bias", None)
        else:
            module.bias.data = bias
    state.merged.clear()
    return restored


def detach_v2(state: V2State) -> None:
    """Remove every bias/scale and its hook (unmerging first), and give the norms back their weights (and dtype)
    from attach."""
    restore_linears(state)  # a merged layer: its weights from before the merge (its hook went at the merge)
    for hook in [*state.hooks, *state.linear_hooks.values()]:
        hook.remove()
    for module in state.linears.values():
        del module.adapter
    for name, module in state.norms.items():
        module.weight.requires_grad_(False)
        if name in state.original_norms:
            module.weight.data = state.original_norms[name]


def v2_tensors(state: V2State) -> dict[str, torch.Tensor]:
    """The live V2 parameters under their file names (:data:`V2_PREFIX` + module name + bias/scale/weight)."""
    tensors = {}
    for name, module in state.linears.items():
        tensors[f"{V2_PREFIX}{name}.bias"] = module.adapter.bias
        tensors[f"{V2_PREFIX}{name}.scale"] = module.adapter.scale
    for name, module in state.norms.items():
        tensors[f"{V2_PREFIX}{name}.weight"] = module.weight
    return tensors
