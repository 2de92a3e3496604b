"""The shipped recipes: each loads through its command's --config, the LLaMA ones state the paper's settings, and
each can be planned on the meta device (nothing downloaded: the bases are hub ids planned from the table)."""

from __future__ import annotations

import dataclasses

import pytest

from mm_adapter.cli.commands import BY_WORDS
from mm_adapter.cli.parse import parse
from mm_adapter.jobs.configs.plan import PlanConfig
from mm_adapter.jobs.plan import RECIPE_COMMANDS, plan, read_recipe
from mm_adapter.recipes import FOLDER

RECIPES = sorted(path.stem for path in FOLDER.glob("*.yaml"))


def _given(stem: str) -> dict:
    """What the command line must add to a recipe: --out, and --data where an Alpaca recipe names none."""
    return {"out": "o", **({"data": "a.json"} if stem.startswith("alpaca-") and "llama" not in stem else {})}


def _parse(stem: str):
    prefix, name = stem.split("-", 1)
    command = BY_WORDS[tuple(RECIPE_COMMANDS[prefix][0].split())]
    return parse(command, ["--config", name, *[f"--{key}={value}" for key, value in _given(stem).items()]])


@pytest.mark.parametrize("stem", RECIPES)
def test_every_recipe_loads_through_its_commands_config_flag_as_plan_reads_it(stem):
    """`mm-adapter train <prefix> --config <name>` finds each file by name, accepts every setting, and reads it as
    `mm-adapter plan` does (one recipe, one meaning)."""
    assert _parse(stem) == dataclasses.replace(read_recipe(stem).config, **_given(stem))


def test_the_llama7b_alpaca_recipe_is_the_papers():
    """10 x 30, 5 epochs, 2 warmup, base lr 9e-3 scaled by batch, wd 0.02, batch 4 per GPU, length 512, LLaMA-7B."""
    config = _parse("alpaca-llama7b")
    assert (config.adapter.adapter_len, config.adapter.adapter_layers) == (10, 30)
    train = config.train
    assert (train.epochs, train.warmup_epochs, train.base_lr, train.lr, train.weight_decay, train.batch_size,
            train.accum_steps) == (5, 2.0, 9e-3, None, 0.02, 4, 1)
    assert config.max_seq_len == 512 and config.model.base == "huggyllama/llama-7b"
    assert config.data == "tatsu-lab/alpaca"


def test_the_scienceqa_recipe_trains_images_from_the_hf_dataset_with_vitl14():
    """Images through CLIP ViT-L/14 at 4 depths, the HF copy (--hf), the paper's letters format, LLaMA-7B."""
    config = _parse("scienceqa-llama7b-vitl14")
    assert config.images and config.source.hf == "derek-thomas/ScienceQA" and config.source.data is None
    assert (config.visual.clip_model, config.visual.clip_layers, config.format) == ("ViT-L-14", 4, "QCM-A")
    assert (config.adapter.adapter_len, config.adapter.adapter_layers) == (10, 30)


def test_the_65b_recipe_shards_with_fsdp_and_checkpoints_activations():
    """LLaMA-65B, 10 x 80, strategy fsdp with activation checkpointing (the trainer's settings of those names)."""
    config = _parse("alpaca-llama65b-fsdp")
    assert config.model.base == "huggyllama/llama-65b" and config.adapter.adapter_layers == 80
    assert config.train.strategy == "fsdp" and config.train.activation_checkpointing is True


@pytest.mark.parametrize("name, trainable", [("llama7b-alpaca", 1_229_760), ("llama7b-scienceqa-vitl14", 1_766_400),
                                             ("llama65b-alpaca-fsdp", 6_558_720), ("alpaca-smollm2-cpu", 173_070)])
def test_every_model_recipe_plans_on_the_meta_device(name, trainable):
    """`mm-adapter plan` reads each recipe and counts what training will print; 65B fits 80 GiB GPUs only sharded."""
    result = plan(PlanConfig(name, gpus=8, gpu_memory=80))
    assert result.counts.trainable == trainable
    if "65b" in name:
        assert result.strategy == "fsdp" and result.needed is not None and result.needed <= 8
        assert result.total_bytes <= 80 * 2**30
