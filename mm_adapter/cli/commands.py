"""The command table: each command's words, config class, job function, report and recipes.

Everything is named by import path and loaded only for the command that runs, so
``mm-adapter --help`` imports neither torch nor transformers.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Command:
    words: tuple[str, ...]
    config: str  # "module:class" of the config dataclass the flags are made from
    job: str  # "module:function" taking the config, returning a result
    summary: str
    recipes: str | None = None  # recipe files are mm_adapter/recipes/<recipes>-<name>.yaml
    report: str | None = None  # function in mm_adapter.cli.reports printing the result
    main_flags: tuple[str, ...] = ()  # field names of the flags --help shows first (then --config), in this order

    @property
    def name(self) -> str:
        return " ".join(self.words)

    def config_class(self) -> type:
        return _named(self.config)

    def job_function(self) -> Any:
        return _named(self.job)


def _named(path: str) -> Any:
    """The object a "module:name" path names, its module imported only now."""
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


COMMANDS = (
    Command(("train", "alpaca"), "mm_adapter.jobs.configs.training:TrainAlpacaConfig",
            "mm_adapter.jobs.train_alpaca:train_alpaca",
            "fine-tune a LLaMA-Adapter on Alpaca instruction data", recipes="alpaca", report="trained",
            main_flags=("data", "out", "base", "method", "limit", "epochs", "max_steps", "lr", "strict", "threads",
                        "config")),
    Command(("train", "scienceqa"), "mm_adapter.jobs.configs.training:TrainScienceQAConfig",
            "mm_adapter.jobs.train_scienceqa:train_scienceqa",
            "fine-tune on ScienceQA (text-only or with images); keeps the best val checkpoint",
            recipes="scienceqa", report="trained",
            main_flags=("data", "hf", "out", "base", "method", "format", "images", "limit", "epochs", "max_steps",
                        "lr", "threads", "config")),
    Command(("eval", "scienceqa"), "mm_adapter.jobs.configs.evaluation:EvalScienceQAConfig",
            "mm_adapter.jobs.eval_scienceqa:eval_scienceqa",
            "evaluate a base model (with or without an adapter) on a ScienceQA split", report="evaluated",
            main_flags=("split", "data", "hf", "out", "adapter", "base", "limit", "format", "mode", "threads",
                        "config")),
    Command(("ablate", "scienceqa"), "mm_adapter.jobs.configs.ablation:AblateConfig",
            "mm_adapter.jobs.ablate:ablate_scienceqa",
            "the paper's ablations on ScienceQA: a training run per variant, val accuracy table and chart",
            recipes="scienceqa", report="ablated",
            main_flags=("data", "hf", "out", "base", "images", "limit", "epochs", "max_steps", "threads", "config")),
    Command(("table",), "mm_adapter.eval.config:TableConfig", "mm_adapter.eval.table:build_table",
            "score prediction files into the official ScienceQA table",
            main_flags=("predictions", "problems", "out", "reference", "costs", "bootstrap", "config")),
    Command(("generate",), "mm_adapter.jobs.configs.answering:GenerateConfig", "mm_adapter.jobs.generate:generate",
            "answer instructions with the base and one of several adapters, streamed",
            main_flags=("instruction", "input", "adapter", "use", "base", "temperature", "max_new_tokens", "config")),
    Command(("demo",), "mm_adapter.jobs.configs.answering:DemoConfig", "mm_adapter.jobs.demo:demo",
            "answer one multiple-choice question about an image, with option probabilities", report="demo",
            main_flags=("question", "choices", "image", "context", "adapter", "base", "config")),
    Command(("serve",), "mm_adapter.jobs.configs.answering:ServeConfig", "mm_adapter.jobs.serve:serve",
            "serve the demo as a local web page",
            main_flags=("adapter", "base", "host", "port", "config")),
    Command(("convert",), "mm_adapter.jobs.configs.interop:ConvertConfig", "mm_adapter.jobs.convert:convert",
            "convert adapters between the official release, PEFT, litgpt, ours and adapter folders",
            report="converted",
            main_flags=("input", "output", "source", "target", "base", "overwrite", "config")),
    Command(("push",), "mm_adapter.jobs.configs.interop:PushConfig", "mm_adapter.jobs.push:push",
            "upload an adapter folder to the Hugging Face hub (needs a token)", report="pushed",
            main_flags=("adapter", "repo", "private", "config")),
    Command(("main",), "mm_adapter.jobs.configs.main_job:MainConfig", "mm_adapter.jobs.main_job:main_job",
            "the main job: data -> multimodal adapter -> test table -> one demo answer", report="main",
            main_flags=("data", "out", "threads", "config")),
    Command(("data", "synthetic-images"), "mm_adapter.data.config:SyntheticDataConfig",
            "mm_adapter.jobs.synthetic_data:synthetic_images",
            "write a generated ScienceQA-format image set whose answers are only in the pictures", report="generated",
            main_flags=("out", "n_train", "n_val", "n_test", "seed", "config")),
    Command(("data", "synthetic-video"), "mm_adapter.data.config:SyntheticDataConfig",
            "mm_adapter.jobs.synthetic_data:synthetic_video",
            "write a generated ScienceQA-format clip set whose answers need the order of the frames",
            report="generated",
            main_flags=("out", "n_train", "n_val", "n_test", "seed", "config")),
    Command(("data", "synthetic-audio"), "mm_adapter.data.config:SyntheticDataConfig",
            "mm_adapter.jobs.synthetic_data:synthetic_audio",
            "write a generated ScienceQA-format audio set whose answers are only in the recordings (audio.wav)",
            report="generated",
            main_flags=("out", "n_train", "n_val", "n_test", "seed", "config")),
    Command(("data", "spoken-context"), "mm_adapter.data.config:SpokenContextConfig",
            "mm_adapter.jobs.synthetic_data:spoken_context",
            "write real ScienceQA text problems twice: context read aloud into audio.wav, and context written",
            report="generated",
            main_flags=("data", "out", "splits", "seed", "config")),
    Command(("plan",), "mm_adapter.jobs.configs.plan:PlanConfig", "mm_adapter.jobs.plan:plan",
            "parameter counts, per-GPU memory and GPUs needed for a training recipe (no weights downloaded)",
            report="planned",
            main_flags=("recipe", "gpus", "gpu_memory", "config")),
)
BY_WORDS = {command.words: command for command in COMMANDS}


def find(argv: list[str]) -> tuple[Command | None, list[str], str]:
    """(the command named by argv's first words, the rest of argv, the words consumed)."""
    for length in (2, 1):
        words = tuple(argv[:length])
        if words in BY_WORDS:
            return BY_WORDS[words], argv[length:], " ".join(words)
    return None, argv, ""
