"""Export a LLaMA-Adapter V2 model as a plain transformers model folder plus our prompt adapter.

The bias/scale is merged into the base's linear layers (:mod:`mm_adapter.model.v2_merge`) and the trained norms are
the base's own weights, so both go into the folder ``save_pretrained`` writes, which ``AutoModelForCausalLM`` loads
with no mm-adapter code (it computes the V2 model without its prompts). The prompts and gates cannot be merged: they
are written beside it as our adapter file (v1: prompts and gates only, fingerprinted on the merged base), which
``load_adapter`` puts on the loaded folder to give the V2 model's logits.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from mm_adapter.errors import MMAdapterError
from mm_adapter.files.atomic import atomic_dir
from mm_adapter.model.adapter import detach_adapter, release_v2
from mm_adapter.model.adapter_file import save_adapter
from mm_adapter.model.v2_merge import drop_v2, merge_v2, unmerge_v2, v2_state_to_merge

PROMPT_ADAPTER = "prompt_adapter.safetensors"  # the prompts and gates, beside the merged model's own files
BIAS_FLAGS = ("attention_bias", "mlp_bias")  # config switches (Llama's) that give a family's linear layers a bias


def _linear_biases(model: nn.Module) -> dict[str, bool]:
    return {name: module.bias is not None for name, module in model.named_modules() if isinstance(module, nn.Linear)}


def _skeleton_biases(model: nn.Module, config) -> dict[str, bool]:
    """Which linear layers have a bias in the model transformers builds from ``config`` (on meta: no memory)."""
    with torch.device("meta"):
        return _linear_biases(type(model)(config))


def plain_config(model: nn.Module):
    """The config under which transformers' own class holds every bias the merge made, turning on a bias switch
    (``attention_bias``/``mlp_bias``) where needed; a merged bias this architecture has no place for is one line
    (all-zero ones are dropped: they change nothing). Layers the switch gives a bias that ours lacks get zeros."""
    config, ours = copy.deepcopy(model.config), _linear_biases(model)
    plain = _skeleton_biases(model, config)
    if any(ours[name] and not plain[name] for name in ours) and any(hasattr(config, flag) for flag in BIAS_FLAGS):
        for flag in BIAS_FLAGS:
            if hasattr(config, flag):
                setattr(config, flag, True)
        plain = _skeleton_biases(model, config)
    modules = dict(model.named_modules())
    head, embeddings = model.get_output_embeddings(), model.get_input_embeddings()
    if head is not None and head.weight is not embeddings.weight and getattr(config, "tie_word_embeddings", False):
        config.tie_word_embeddings = False  # the merge gave a tied head its own, scaled weight (AdapterV2Config.head)
    for name, has_bias in ours.items():
        if has_bias and not plain[name] and torch.count_nonzero(modules[name].bias):
            fix = ("the output layer's bias (AdapterV2Config.head) has no place in it" if modules[name] is head else
                   "train with --v2-targets naming layers it has a bias on")
            raise MMAdapterError(f"{name}: a {config.model_type} model has no bias there, so the adapter V2 bias "
                                 f"cannot be merged into a plain transformers model; {fix} (or keep the adapter "
                                 "unmerged)")
    for name, has_bias in ours.items():
        if has_bias and not plain[name]:
            modules[name].register_parameter("bias", None)
        elif plain[name] and not has_bias:
            module = modules[name]
            module.bias = nn.Parameter(module.weight.new_zeros(module.out_features), requires_grad=False)
    return config


def export_merged(model: nn.Module, tokenizer, folder: str | Path, overwrite: bool = False,
                  metadata: dict[str, str] | None = None) -> Path:
    """Write ``model`` (a V2 adapter attached) as FOLDER: the merged base and ``tokenizer`` by ``save_pretrained``,
    and :data:`PROMPT_ADAPTER`. The model is consumed: afterwards it is the merged base, adapter detached."""
    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise MMAdapterError(f"{folder}: already exists (pass overwrite to replace it)")
    state = v2_state_to_merge(model)
    merge_v2(state)
    try:
        config = plain_config(model)  # before anything is written
    except MMAdapterError:
        unmerge_v2(state)
        raise
    drop_v2(release_v2(model))
    try:
        with atomic_dir(folder, overwrite=overwrite) as staging:
            save_adapter(model, staging / PROMPT_ADAPTER, extra_metadata=metadata)
            detach_adapter(model)
            model.config = config
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
    except OSError as error:
        raise MMAdapterError(f"{folder}: cannot write the merged model ({error.strerror or error})") from None
    return folder


__all__ = ["PROMPT_ADAPTER", "export_merged", "plain_config"]
