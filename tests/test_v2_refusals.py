"""LLaMA-Adapter V2's bad settings are one line naming the flag or field: V2 options on another method, a target list
naming no module, more fusion layers than adapted layers, a target the base lacks; on the command line, exit 2 before
any work (nothing written)."""

from __future__ import annotations

import pytest

from mm_adapter.errors import ConfigError, MMAdapterError
from mm_adapter.methods.config import TuningConfig
from mm_adapter.model.config import AdapterV2Config
from tiny import v2_model


@pytest.mark.parametrize("options,message", [
    (dict(method="lora", v2_targets="q_proj"), "v2_targets: applies to --method llama-adapter-v2, not lora"),
    (dict(v2_norms=False), "v2_norms: applies to --method llama-adapter-v2, not llama-adapter"),
    (dict(method="llama-adapter-v2", v2_targets=" , "), "v2_targets: names no module"),
    (dict(method="llama-adapter-v2", lora_rank=2), "lora_rank: applies to --method lora, not llama-adapter-v2"),
])
def test_v2_options_are_checked_in_one_line(options, message):
    with pytest.raises(ConfigError) as caught:
        TuningConfig(**options)
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("command,flags,line", [
    (["train", "alpaca", "--data", "d.json"], ["--v2-targets", "q_proj"],
     "error: --v2-targets: applies to --method llama-adapter-v2, not llama-adapter"),
    (["train", "scienceqa", "--data", "d"], ["--method", "lora", "--v2-norms", "false"],
     "error: --v2-norms: applies to --method llama-adapter-v2, not lora"),
    (["train", "scienceqa", "--data", "d"], ["--method", "llama-adapter-v2", "--v2-targets", ","],
     "error: --v2-targets: names no module; give all or a comma list such as q_proj,v_proj"),
    (["train", "scienceqa", "--data", "d"], ["--method", "llama-adapter-v2", "--v2-fusion-layers", "0"],
     "error: --v2-fusion-layers: must be >= 1, got 0"),
    (["train", "scienceqa", "--data", "d"], ["--method", "llama-adapter-v2", "--v2-disjoint", "true"],
     "error: --v2-disjoint: splits the parameters between problems with and without an image; it applies with "
     "--images"),
    (["train", "alpaca", "--data", "d.json"], ["--method", "llama-adapter-v2", "--v2-disjoint", "false"],
     "error: --v2-disjoint: splits the parameters between problems with and without an image; train alpaca has no "
     "images"),
    (["train", "scienceqa", "--data", "d"], ["--method", "lora", "--images"],
     "error: --images: adds image features to the adaption prompts of --method llama-adapter or llama-adapter-v2; "
     "lora has none"),
])
def test_bad_v2_flags_are_one_line_and_exit_2_before_any_work(tmp_path, capsys, command, flags, line):
    from tiny_text import command_here

    code, out, err = command_here([*command, "--out", str(tmp_path / "out"), *flags], capsys)
    assert (code, err.strip()) == (2, line) and not (tmp_path / "out").exists()


def test_more_fusion_layers_than_adapted_layers_is_one_line():
    with pytest.raises(MMAdapterError, match=r"^adapter V2 fusion_layers=3 \(--v2-fusion-layers\) but only "
                                             r"adapter_layers=2 layers are adapted$"):
        v2_model("llama-gqa", AdapterV2Config(fusion_layers=3), adapter_layers=2)


def test_a_target_the_base_lacks_is_one_line():
    with pytest.raises(MMAdapterError, match=r"^adapter V2 target 'qkv' \(--v2-targets\) is no linear layer of this "
                                             r"base's decoder layers; they have down_proj, gate_proj, k_proj, o_proj, "
                                             r"q_proj, up_proj, v_proj \(or give all\)$"):
        v2_model("llama-gqa", AdapterV2Config(targets="q_proj,qkv"))
