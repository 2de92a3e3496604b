"""``AdapterConfig.gate_init``: zero (the default, the paper's zero-init attention) or random (its ablation).

Zero must keep the adapted model exactly the base model at initialisation; random must really draw the gates
(N(0, gate_init_std^2) from torch's seeded generator) and so move the model away from the base.
"""

from __future__ import annotations

import pytest
import torch

from mm_adapter import AdapterConfig, adapter_parameters, attach_adapter
from mm_adapter.cli.commands import BY_WORDS
from mm_adapter.cli.parse import parse
from mm_adapter.errors import ConfigError
from tiny import left_padded_batch, tiny_model


def _logits(model) -> torch.Tensor:
    ids, mask, positions = left_padded_batch()
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=positions).logits


def _gates(model) -> torch.Tensor:
    return torch.cat([entry["gate"].detach() for entry in adapter_parameters(model).values()])


@pytest.mark.parametrize("activation,granularity", [("tanh", "head"), ("identity", "head"), ("tanh", "layer")])
def test_zero_init_is_the_default_and_still_exactly_the_base_model(activation, granularity):
    """The default gate init is zero, and with it the adapted model's logits equal the base model's bit for bit
    (prompts are random; only the zero gates hide them), for either activation and granularity."""
    model = tiny_model("llama-gqa")
    base = _logits(model)
    config = AdapterConfig(adapter_len=3, adapter_layers=3, gate_activation=activation, gate_granularity=granularity)
    assert config.gate_init == "zero"
    attach_adapter(model, config)
    assert torch.count_nonzero(_gates(model)) == 0
    assert torch.equal(_logits(model), base)


def test_random_init_draws_the_gates_with_their_std_and_moves_the_model():
    """gate_init=random draws every gate from the seeded normal scaled by gate_init_std (the same seed at twice the
    std gives exactly twice the gates), and the model at initialisation is no longer the base model."""
    drawn = {}
    for std in (0.5, 1.0):
        model = tiny_model("llama-gqa")
        torch.manual_seed(7)
        attach_adapter(model, AdapterConfig(adapter_len=3, adapter_layers=3, gate_init="random", gate_init_std=std))
        drawn[std] = _gates(model)
    assert torch.count_nonzero(drawn[1.0]) == drawn[1.0].numel()
    assert torch.equal(drawn[1.0] * 0.5, drawn[0.5])
    base = _logits(tiny_model("llama-gqa"))
    assert (_logits(model) - base).abs().max() > 1e-3


def test_gate_init_is_checked_travels_in_the_config_and_has_flags():
    """Unknown inits and non-positive stds are refused naming the field; the config's JSON keeps gate_init and a
    config written before it existed reads as zero; --gate-init/--gate-init-std reach the training config."""
    with pytest.raises(ConfigError, match="gate_init: must be one of zero, random, got 'ones'"):
        AdapterConfig(gate_init="ones")
    with pytest.raises(ConfigError, match="gate_init_std: must be > 0"):
        AdapterConfig(gate_init_std=0.0)
    config = AdapterConfig(gate_init="random", gate_init_std=0.1)
    assert AdapterConfig.from_dict(config.to_dict()) == config
    older = {k: v for k, v in AdapterConfig().to_dict().items() if k not in ("gate_init", "gate_init_std")}
    assert AdapterConfig.from_dict(older).gate_init == "zero"
    parsed = parse(BY_WORDS[("train", "scienceqa")], ["--out", "o", "--data", "d", "--gate-init", "random",
                                                       "--gate-init-std", "0.1"])
    assert (parsed.adapter.gate_init, parsed.adapter.gate_init_std) == ("random", 0.1)
