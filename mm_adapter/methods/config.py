"""Which parameters a training run trains, and how many: the method and its sizes (``--method``, ``--lora-rank``, ...).

Torch-free, like the other configs: the command line builds its flags from this dataclass before any model
code is imported. Sizes left unset (None) are resolved per method on the base by ``mm_adapter.methods.attach``, so
a written ``config.yaml`` keeps them unset and reproduces the run, and an option that does not apply to the
chosen method can be told from one the user set: it is refused in one line naming the flag.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from mm_adapter.errors import ConfigError
from mm_adapter.fields import check, check_positive, option
from mm_adapter.model.config import AdapterV2Config

LLAMA_ADAPTER, LLAMA_ADAPTER_V2 = "llama-adapter", "llama-adapter-v2"
PEFT_ADAPTION_PROMPT, LORA, PROMPT_TUNING, PREFIX_TUNING, FULL = (
    "peft-adaption-prompt", "lora", "prompt-tuning", "prefix-tuning", "full")
METHODS = (LLAMA_ADAPTER, LLAMA_ADAPTER_V2, PEFT_ADAPTION_PROMPT, LORA, PROMPT_TUNING, PREFIX_TUNING, FULL)
OUR_METHODS = (LLAMA_ADAPTER, LLAMA_ADAPTER_V2)  # saved as our adapter file (a V2 file records its V2 part)
PEFT_METHODS = (PEFT_ADAPTION_PROMPT, LORA, PROMPT_TUNING, PREFIX_TUNING)
VIRTUAL_TOKEN_METHODS = (PROMPT_TUNING, PREFIX_TUNING)
DEFAULT_LORA_TARGETS = "q_proj,v_proj"
# option -> the methods it sizes; set for any other method it is refused
APPLIES_TO = {"lora_rank": (LORA,), "lora_alpha": (LORA,), "lora_targets": (LORA,),
              "num_virtual_tokens": VIRTUAL_TOKEN_METHODS,
              **{name: (LLAMA_ADAPTER_V2,)
                 for name in ("v2_targets", "v2_norms", "v2_fusion_layers", "v2_disjoint", "v2_head")}}
V2_FLAGS = {"targets": "v2_targets", "train_norms": "v2_norms", "fusion_layers": "v2_fusion_layers",
            "head": "v2_head"}  # V2 config field -> our flag


def peft_installed() -> bool:
    """Whether the ``peft`` package can be imported (found without importing it: that takes seconds)."""
    return importlib.util.find_spec("peft") is not None


@dataclass
class TuningConfig:
    """What training trains: our LLaMA-Adapter, a PEFT method (through PEFT itself) or the whole base. Unset sizes
    are chosen on the base so the trainable count is nearest the LLaMA-Adapter of --adapter-len x
    --adapter-layers (printed at the start of the run)."""

    method: str = option(LLAMA_ADAPTER, choices=METHODS)
    """llama-adapter (ours); llama-adapter-v2 (ours plus a bias and scale on linear layers and trainable norms, saved
    as our adapter file); peft-adaption-prompt, lora, prompt-tuning, prefix-tuning (PEFT's own, saved as a
    folder); full (every base weight, in fp32; saved as a whole model folder)"""
    lora_rank: int | None = None
    """lora only: rank (None: the rank nearest the llama-adapter's trainable count; 3 on SmolLM2-135M)"""
    lora_alpha: float | None = None
    """lora only: scaling numerator, the update is alpha/rank x BA (None: 2 x rank)"""
    lora_targets: str | None = None
    """lora only: comma list of module names (None: q_proj,v_proj; all-linear: every linear layer but the head)"""
    num_virtual_tokens: int | None = None
    """prompt-tuning, prefix-tuning only: virtual tokens (None: nearest the llama-adapter's trainable count; 300
    and 15 on SmolLM2-135M)"""
    v2_targets: str | None = None
    """llama-adapter-v2 only: linear layers that get a bias and scale, all (None: every linear of attention and
    MLP) or a comma list such as q_proj,v_proj"""
    v2_norms: bool | None = None
    """llama-adapter-v2 only: whether the normalisation weights train too (None: yes, as in the paper)"""
    v2_fusion_layers: int | None = None
    """llama-adapter-v2 with --images only: the bottom N adapted layers get the images (early fusion), the rest
    only their own prompts (None: 1; --adapter-layers: into every adapted layer, as llama-adapter does)"""
    v2_head: bool | None = None
    """llama-adapter-v2 only: whether the output layer (lm_head) gets a bias and scale too, as litgpt's adapter_v2
    trains them (None: no, as the paper and the official release)"""
    v2_disjoint: bool | None = None
    """llama-adapter-v2 with --images only: V2's joint training with disjoint parameters, problems with an image train
    only the projection and the early layers' prompts and gates, problems without one only the rest (None: yes)"""

    def __post_init__(self) -> None:
        check(self, "method", choices=METHODS)
        check_positive(self, "lora_rank", "num_virtual_tokens")
        check(self, "lora_alpha", low=0, low_open=True, optional=True)
        if self.lora_targets is not None and not self.targets:
            raise ConfigError("lora_targets", "names no module; give a comma list such as q_proj,v_proj")
        for name, methods in APPLIES_TO.items():
            if getattr(self, name) is not None and self.method not in methods:
                raise ConfigError(name, f"applies to --method {' or '.join(methods)}, not {self.method}")
        if self.method == LLAMA_ADAPTER_V2:
            try:
                self.adapter_v2()
            except ConfigError as error:  # the field names the V2 config's: the flag is ours
                raise ConfigError(V2_FLAGS[error.field], error.reason) from None
        if self.method in PEFT_METHODS and not peft_installed():
            raise ConfigError("method", f"{self.method} trains through PEFT, which is not installed here "
                                        "(pip install peft, or the project's bench extra)")

    @property
    def disjoint(self) -> bool:
        """Whether image and text problems train disjoint parameters (V2 with --images; on unless turned off)."""
        return self.method == LLAMA_ADAPTER_V2 and self.v2_disjoint is not False

    def adapter_v2(self) -> AdapterV2Config | None:
        """The V2 settings of ``--method llama-adapter-v2`` (defaults where unset); None for every other method."""
        if self.method != LLAMA_ADAPTER_V2:
            return None
        given = {field: getattr(self, flag) for field, flag in V2_FLAGS.items()}
        return AdapterV2Config(**{key: value for key, value in given.items() if value is not None})

    @property
    def targets(self) -> str:
        """LoRA's target modules, normalised: ``a,b`` (no spaces or empty names) or PEFT's word ``all-linear``."""
        text = DEFAULT_LORA_TARGETS if self.lora_targets is None else self.lora_targets
        return ",".join(name.strip() for name in text.split(",") if name.strip())
