"""Files written before the library was regrouped by concern (commit 0ba8f29, module names such as
mm_adapter.checkpoint and mm_adapter.methods) load with today's code and give what they gave then: an adapter file,
an adapter folder, a LoRA method folder (each with the logits the old code computed on a fixed input), and the
config.yaml of every command. The fixture's make.py says how it was made."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from mm_adapter.cli.commands import find
from mm_adapter.cli.parse import parse
from mm_adapter.encoders.audio.config import AudioConfig
from mm_adapter.files.output_folder import config_dict
from mm_adapter.methods.folders import load_peft_folder
from mm_adapter.model.adapter_file import apply_adapter, read_adapter
from mm_adapter.pretrained import from_pretrained, recorded_format
from tiny import tiny_model

FIXTURE = Path(__file__).with_name("fixtures") / "before_regroup_0ba8f29"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())
CONFIGS = sorted((FIXTURE / "configs").glob("*/config.yaml"))


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor(EXPECTED["input"])).logits[0, -3:]


def same(model, key: str) -> None:
    assert torch.allclose(logits(model), torch.tensor(EXPECTED[key]), atol=1e-5, rtol=0), key


def test_the_tiny_base_is_the_one_the_fixture_was_made_on():
    """Otherwise the comparisons below would compare different bases."""
    same(tiny_model(), "base")


def test_an_adapter_file_gives_its_old_logits():
    adapter = read_adapter(FIXTURE / "adapter.safetensors")
    assert adapter.prompt_format == "QCM-T" and adapter.config.adapter_len == 3
    model = tiny_model()
    apply_adapter(model, adapter)
    same(model, "adapter")
    assert not torch.allclose(logits(model), torch.tensor(EXPECTED["base"]), atol=1e-3)


def test_an_adapter_folder_gives_its_old_logits():
    same(from_pretrained(tiny_model(), FIXTURE / "adapter_folder"), "adapter")


def test_a_lora_folder_gives_its_old_logits():
    pytest.importorskip("peft")
    assert recorded_format(FIXTURE / "lora_folder") == "QCM-T"
    same(load_peft_folder(tiny_model(), FIXTURE / "lora_folder"), "lora")


def test_the_fixture_has_every_command_that_writes_a_config():
    assert {path.parent.name for path in CONFIGS} >= {"train_alpaca", "train_scienceqa", "eval_scienceqa", "table",
                                                      "ablate_scienceqa", "generate", "convert", "main", "plan"}


@pytest.mark.parametrize("path", CONFIGS, ids=[path.parent.name for path in CONFIGS])
def test_an_old_config_file_reads_back_every_setting(path):
    """``--config config.yaml`` of a run made before the regroup gives a config with exactly the settings it lists;
    a setting added since (ADDED_SINCE) takes the value that keeps the old run what it was."""
    written = yaml.safe_load(path.read_text())
    command, rest, _ = find(written.pop("command").split())
    assert command is not None and rest == []
    read = config_dict(parse(command, ["--config", str(path)]))
    for dotted, value in ADDED_SINCE.items():
        *parents, name = dotted.split(".")
        section, old = read, written
        for parent in parents:
            section, old = section.get(parent, {}), old.get(parent, {})
        if name in section and name not in old:
            assert section.pop(name) == value, dotted
    assert read == written


# Settings added after the fixture was made, with the value an old config must read as (its run's behaviour);
# ``name`` is table's (--name), new there, while an eval's config always had one.
ADDED_SINCE = {"train.max_steps": None, "strict": False, "name": None, "tuning.v2_targets": None,
               "tuning.v2_norms": None, "tuning.v2_fusion_layers": None, "tuning.v2_disjoint": None,
               "tuning.v2_head": None,  # issue 25: no bias and scale on the output layer
               # issue 24: no sound unless asked for (the sound section's defaults are train scienceqa's)
               "audio": False, "skip_bad_audio": False, "blank_audio": False, "audio_encoder": None,
               "sound": config_dict(AudioConfig(audio_standardize=True))}
