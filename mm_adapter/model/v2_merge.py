"""Merge LLaMA-Adapter V2's bias/scale into the base's linear weights, and take it back out.

``s * (W x + b_W + b) = (diag(s) W) x + s * (b_W + b)``: one linear layer computes what the layer and its hook did,
so a merged model needs no mm-adapter code for that part (the trained norms already are the base's own weights).
The weights from before the merge are kept, not divided back, so :func:`unmerge_v2` restores them bit for bit.
The prompts and gates cannot be merged: they stay an adapter (see :func:`drop_v2` for the export).
"""

from __future__ import annotations

from torch import nn

from mm_adapter.errors import MMAdapterError
from mm_adapter.model.adapter import adapter_v2_state
from mm_adapter.model.adapter_v2 import V2State, hook_bias_scale, restore_linears


def v2_state_to_merge(model: nn.Module, source: str = "this model's adapter") -> V2State:
    """The attached V2 part, or one line saying there is none (a v1 adapter has no bias/scale to merge)."""
    state = adapter_v2_state(model)
    if state is None:
        raise MMAdapterError(f"{source}: no LLaMA-Adapter V2 part (bias/scale) to merge; only a "
                             "--method llama-adapter-v2 adapter can be merged")
    return state


def merge_v2(state: V2State) -> None:
    """Fold every bias/scale of ``state`` into its linear layer (in place) and switch its hook off.

    The product is taken in fp32 and rounded once to the layer's dtype, so in fp32 the merged logits differ from the
    hooked ones only by the reordered rounding of ``s * (W x)`` against ``(s W) x`` (about 1e-6 relative).
    """
    if state.merged:
        raise MMAdapterError("the adapter V2 bias/scale is already merged into the base (unmerge_v2 first)")
    for name, module in state.linears.items():
        if not module.weight.is_floating_point() or module.weight.device.type == "meta":
            raise MMAdapterError(f"{name}: weight is {module.weight.dtype} on {module.weight.device.type}; merging "
                                 "adapter V2 needs a plain floating-point linear layer (load the base unquantised)")
    for name, module in state.linears.items():
        weight, bias = module.weight, None if module.bias is None else module.bias.data
        scale, added = module.adapter.scale.detach().float(), module.adapter.bias.detach().float()
        merged_bias = scale * (added + (0.0 if bias is None else bias.float()))
        # a new parameter, not new data: an output layer tied to the input embeddings (AdapterV2Config.head) is
        # untied, so the scale reaches the logits and never the embeddings; unmerge puts the shared one back
        module.weight = nn.Parameter((scale[:, None] * weight.detach().float()).to(weight.dtype), requires_grad=False)
        if bias is None:
            module.bias = nn.Parameter(merged_bias.to(weight.dtype), requires_grad=False)
        else:
            module.bias.data = merged_bias.to(bias.dtype)
        state.linear_hooks.pop(name).remove()
        state.merged[name] = (weight, bias)


def unmerge_v2(state: V2State) -> None:
    """Put back the weights (and bias, or none) each linear layer had before :func:`merge_v2`, exactly, and switch
    its bias/scale hook on again."""
    if not state.merged:
        raise MMAdapterError("the adapter V2 bias/scale is not merged into the base")
    for name in restore_linears(state):
        hook_bias_scale(state, name)


def drop_v2(state: V2State) -> None:
    """After :func:`merge_v2`, make the merge the base: remove the bias/scale children and the norms' hooks, keep the
    trained norm weights, frozen and cast back to their dtype at attach (they train in fp32 on a bf16 base).
    The model then computes the V2 model's function with plain modules, except for the prompts and gates."""
    if not state.merged:
        raise MMAdapterError("drop_v2 before merge_v2 would lose the trained bias/scale")
    for module in state.linears.values():
        del module.adapter
    for hook in state.hooks:
        hook.remove()
    for name, module in state.norms.items():
        module.weight.requires_grad_(False)
        if name in state.original_norms:
            module.weight.data = module.weight.data.to(state.original_norms[name].dtype)
    state.merged.clear()
    state.hooks.clear()


__all__ = ["drop_v2", "merge_v2", "unmerge_v2", "v2_state_to_merge"]
