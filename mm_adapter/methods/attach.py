"""The training methods compared on equal terms (``--method``): what each makes trainable on a base, and how much.

| method | trains | built by |
|---|---|---|
| llama-adapter | prompts and zero-initialised gates (ours) | ``attach_adapter`` |
| llama-adapter-v2 | ours, plus a bias and scale on the linear layers and the norm weights | ``attach_adapter(v2=)`` |
| peft-adaption-prompt | PEFT's LLaMA-Adapter, ``adapter_len`` x ``adapter_layers`` | ``peft.get_peft_model`` |
| lora | rank-r updates of the target linear layers | ``peft.get_peft_model`` |
| prompt-tuning | ``num_virtual_tokens`` input embeddings | ``peft.get_peft_model`` |
| prefix-tuning | ``num_virtual_tokens`` keys and values per layer | ``peft.get_peft_model`` |
| full | every base weight, in fp32 (AdamW's state: ~2 GB on SmolLM2-135M) | ``requires_grad_`` |

Everything else is shared: data, prompt format, the trainer (it optimises whatever requires grad), schedule,
validation. PEFT methods are PEFT's own code; only their virtual tokens are routed into our decoder calls
(``virtual_tokens.py``). A size the user leaves unset is the one whose trainable count is nearest the
LLaMA-Adapter of the run's ``AdapterConfig`` on the same base, counted on a weightless (meta-device) copy.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mm_adapter.errors import MMAdapterError
from mm_adapter.files.safe_load import one_line
from mm_adapter.methods.config import (
    FULL, LLAMA_ADAPTER, LLAMA_ADAPTER_V2, LORA, PEFT_ADAPTION_PROMPT, PREFIX_TUNING, PROMPT_TUNING, TuningConfig,
    peft_installed,
)
from mm_adapter.methods.virtual_tokens import route_virtual_tokens
from mm_adapter.model.adapter import attach_adapter, count_trainable
from mm_adapter.model.adapter_file import BaseIdentity
from mm_adapter.model.base import base_source
from mm_adapter.model.config import AdapterConfig

PEFT_CONFIG_CLASSES = {PEFT_ADAPTION_PROMPT: "AdaptionPromptConfig", LORA: "LoraConfig",
                       PROMPT_TUNING: "PromptTuningConfig", PREFIX_TUNING: "PrefixTuningConfig"}


@dataclass
class Tuned:
    """A base made trainable by one method: the model to train and what its saved folders record."""

    model: nn.Module  # what the trainer trains: the base itself, or the PeftModel around it
    method: str
    sizes: dict[str, Any]  # the method's options as resolved on this base
    base: BaseIdentity  # of the untouched base: a PeftModel's own identity would name PEFT's classes
    source: dict[str, str]  # where the base came from (base.base_source)
    budget: int  # trainable parameters of the llama-adapter the unset sizes were matched to

    @property
    def trainable(self) -> int:
        return count_trainable(self.model)

    def describe(self) -> str:
        """One line for the run's log: the method, its sizes, its trainable count and ours for comparison."""
        sizes = ", ".join(f"{key} {value}" for key, value in self.sizes.items())
        ours = "" if self.method == LLAMA_ADAPTER else \
            f" (llama-adapter with the same --adapter-len/--adapter-layers: {self.budget:,})"
        return f"method {self.method}{f' ({sizes})' if sizes else ''}: {self.trainable:,} trainable parameters{ours}"

    def identity(self) -> dict[str, Any]:
        """What a resumed run must share with this one besides the trainable shapes the trainer compares (ours: its
        adapter config, which the trainer records itself, so runs from before methods existed still resume)."""
        return {} if self.method == LLAMA_ADAPTER else {"method": self.method, "method_sizes": self.sizes}


def peft_module():
    """The ``peft`` package, or one line saying it is missing."""
    if not peft_installed():
        raise MMAdapterError("PEFT methods need the peft package, which is not installed here (pip install peft, or "
                             "the project's bench extra)")
    import peft

    return peft


def llama_adapter_count(model: nn.Module, adapter: AdapterConfig) -> int:
    """Trainable parameters of our adapter with ``adapter`` on ``model`` (prompts and gates of each adapted layer)."""
    identity = BaseIdentity.of(model)
    layers = min(adapter.adapter_layers, identity.num_layers)
    return layers * (adapter.adapter_len * identity.hidden_size + adapter.gates_per_layer(identity.num_heads))


def peft_config(method: str, sizes: dict[str, Any]):
    """PEFT's config object for ``method`` with the resolved ``sizes`` (adapter_len, adapter_layers and
    num_virtual_tokens are PEFT's own names)."""
    config_class = getattr(peft_module(), PEFT_CONFIG_CLASSES[method])
    if method == LORA:
        targets = sizes["lora_targets"]
        sizes = {"r": sizes["lora_rank"], "lora_alpha": sizes["lora_alpha"],
                 "target_modules": targets if targets == "all-linear" else targets.split(",")}
    return config_class(task_type="CAUSAL_LM", **sizes)


def wrap_peft(model: nn.Module, method: str, sizes: dict[str, Any]) -> nn.Module:
    """``peft.get_peft_model`` with what PEFT refuses (a target module the base lacks, a model type its
    AdaptionPrompt does not know) as one line naming the method."""
    peft = peft_module()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # transformers' deprecations inside PEFT: not ours to act on
            return route_virtual_tokens(peft.get_peft_model(model, peft_config(method, sizes)))
    except (ValueError, KeyError, TypeError, NotImplementedError) as error:
        raise MMAdapterError(f"--method {method}: PEFT cannot build it on this base ({one_line(error)})") from None


def _meta_twin(model: nn.Module) -> nn.Module:
    """A weightless copy of the base's architecture (meta device): counting a method's parameters there is free."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(model.config)


def _per_unit(model: nn.Module, method: str, sizes: dict[str, Any]) -> int:
    """Trainable parameters of ``method`` at size 1 (rank 1, one virtual token) on ``model``'s architecture; every
    count here is that times the size."""
    return count_trainable(wrap_peft(_meta_twin(model), method, sizes))


def resolve_sizes(model: nn.Module, tuning: TuningConfig, adapter: AdapterConfig, budget: int) -> dict[str, Any]:
    """The method's options with every unset size chosen on ``model``: nearest ``budget`` trainable parameters."""
    def matched(method: str, key: str, given: int | None, **fixed: Any) -> int:
        if given is not None:
            return given
        return max(1, round(budget / _per_unit(model, method, {key: 1, **fixed})))

    if tuning.method == LORA:
        rank = matched(LORA, "lora_rank", tuning.lora_rank, lora_alpha=1.0, lora_targets=tuning.targets)
        alpha = tuning.lora_alpha if tuning.lora_alpha is not None else 2.0 * rank
        return {"lora_rank": rank, "lora_alpha": alpha, "lora_targets": tuning.targets}
    if tuning.method in (PROMPT_TUNING, PREFIX_TUNING):
        return {"num_virtual_tokens": matched(tuning.method, "num_virtual_tokens", tuning.num_virtual_tokens)}
    if tuning.method in (PEFT_ADAPTION_PROMPT, LLAMA_ADAPTER):
        return {"adapter_len": adapter.adapter_len, "adapter_layers": adapter.adapter_layers}
    if tuning.method == LLAMA_ADAPTER_V2:
        v2 = tuning.adapter_v2()
        return {"adapter_len": adapter.adapter_len, "adapter_layers": adapter.adapter_layers,
                "v2_targets": ",".join(v2.target_names), "v2_norms": v2.train_norms,
                "v2_fusion_layers": v2.fusion_layers, **({"v2_head": True} if v2.head else {})}  # old runs: no key
    return {}


def _fp32_trainables(model: nn.Module) -> None:
    """Trainable parameters in fp32, as ours are: AdamW steps of ~1e-3 vanish in bf16's 8-bit mantissa."""
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.is_floating_point() and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()


def build(model: nn.Module, tuning: TuningConfig, adapter: AdapterConfig, sizes: dict[str, Any]) -> nn.Module:
    """``model`` with ``tuning.method``'s trainable parameters (the base itself for ours and full, else a
    PeftModel)."""
    if tuning.method in (LLAMA_ADAPTER, LLAMA_ADAPTER_V2):
        return attach_adapter(model, adapter, tuning.adapter_v2())
    if tuning.method == FULL:
        return model.float().requires_grad_(True)
    return wrap_peft(model, tuning.method, sizes)


def attach_method(model: nn.Module, tuning: TuningConfig, adapter: AdapterConfig, autocast: bool = True) -> Tuned:
    """Make ``model`` (a frozen base from ``load_base``) trainable by ``tuning.method``; returns what to train.

    ``autocast``: training runs under bf16 autocast. Then every trainable parameter is made fp32 (PEFT's
    AdaptionPrompt makes its prompts in the base's dtype and computes them in it, so without autocast a bf16
    base keeps them bf16, as PEFT has them). Seed torch before calling: initial values are drawn here.
    """
    base, source = BaseIdentity.of(model), base_source(model)
    budget = llama_adapter_count(model, adapter)
    sizes = resolve_sizes(model, tuning, adapter, budget)
    trained = build(model, tuning, adapter, sizes)
    if autocast:
        _fp32_trainables(trained)
    return Tuned(trained, tuning.method, sizes, base, source, budget)


def count_for(model: nn.Module, tuning: TuningConfig, adapter: AdapterConfig | None = None) -> int:
    """Trainable parameters ``tuning`` gives on ``model``'s architecture (``adapter``: the budget, default 10 x 30),
    counted on a weightless copy: the base is left as it is."""
    adapter = adapter or AdapterConfig()
    budget = llama_adapter_count(model, adapter)
    if tuning.method == LLAMA_ADAPTER:
        return budget
    twin = _meta_twin(model)
    if tuning.method == FULL:
        return sum(p.numel() for p in twin.parameters())
    if tuning.method == LLAMA_ADAPTER_V2:
        return count_trainable(attach_adapter(twin, adapter, tuning.adapter_v2()))
    return count_trainable(wrap_peft(twin, tuning.method, resolve_sizes(model, tuning, adapter, budget)))
