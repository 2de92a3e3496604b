"""Checks before work: what can be known about a job's inputs without loading a model or reading a whole data set.

The command runs :func:`check_before_work` right after parsing, before it imports the job (whose imports alone,
torch and transformers, take seconds), so a misspelt split, a single choice, a file that is not what the flag
wants, or a first record of the wrong shape is one line in milliseconds, not after the model loaded. (The jobs
refuse the same inputs themselves, before their model loads, for library callers.) Torch-free: it reads at most
``pid_splits.json`` and the first bytes of a data file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mm_adapter.data.config import ScienceQASource
from mm_adapter.data.peek import check_local_split, is_hub_dataset, peek_alpaca_file
from mm_adapter.demo.question import check_question
from mm_adapter.encoders.audio.source import resolve_source
from mm_adapter.errors import ConfigError, MMAdapterError
from mm_adapter.fields import flag_name
from mm_adapter.files.text import regular_file_size
from mm_adapter.jobs.configs.ablation import AblateConfig
from mm_adapter.jobs.configs.answering import DemoConfig, ServeConfig
from mm_adapter.jobs.configs.evaluation import EvalScienceQAConfig
from mm_adapter.jobs.configs.main_job import MainConfig
from mm_adapter.jobs.configs.training import TrainAlpacaConfig, TrainScienceQAConfig
from mm_adapter.methods.config import LLAMA_ADAPTER, LLAMA_ADAPTER_V2, PEFT_ADAPTION_PROMPT
from mm_adapter.model.base_spec import decoder_layers
from mm_adapter.scienceqa.data import read_split, require_file

PROMPT_METHODS = (LLAMA_ADAPTER, LLAMA_ADAPTER_V2, PEFT_ADAPTION_PROMPT)  # the methods that adapt top layers


def check_before_work(config: Any) -> None:
    """Refuse, in one line naming the flag or file, what this config's job would refuse only after loading."""
    try:
        _check(config)
    except ConfigError as error:
        raise MMAdapterError(f"{flag_name(error.field)}: {error.reason}") from None


def _check(config: Any) -> None:
    if isinstance(config, TrainAlpacaConfig):
        _alpaca_data(config.data, config.split)
        _adapted_layers(config)
    elif isinstance(config, TrainScienceQAConfig):  # AblateConfig too
        _scienceqa_source(config.source, {"--train-split": config.train_split, "--val-split": config.val_split})
        _audio_encoder(config.sound.audio_encoder if config.audio else None)
        _adapted_layers(config)
    elif isinstance(config, EvalScienceQAConfig):
        _scienceqa_source(config.source, {"--split": config.split})
        _file("--reference", config.reference, "reference file")
        _audio_encoder(config.audio_encoder)
    elif isinstance(config, DemoConfig):
        _question(config)
        _file("--image", config.image, "image file")
        _file("--audio", config.audio, "sound file")
        _audio_encoder(config.audio_encoder)
    elif isinstance(config, ServeConfig):
        _audio_encoder(config.audio_encoder)
    elif isinstance(config, MainConfig) and config.data is not None:
        _folder("--data", config.data)
    if isinstance(config, (TrainAlpacaConfig, TrainScienceQAConfig, EvalScienceQAConfig, MainConfig)):
        _out(config.out)


def _adapted_layers(config: TrainAlpacaConfig | TrainScienceQAConfig) -> None:
    """More adapted layers than the base has (the paper's 30 on Gemma-3-270m's 18): before the base loads."""
    if config.tuning.method not in PROMPT_METHODS:
        return
    wanted = {"adapter_layers": config.adapter.adapter_layers}
    if isinstance(config, AblateConfig) and config.layers:
        wanted["layers"] = max(config.layers)
    layers = decoder_layers(config.model.base) if max(wanted.values()) > 1 else None
    for field, count in wanted.items():
        if layers is not None and count > layers:
            raise ConfigError(field, f"{count} adapted layers asked, but the base {config.model.base} has only "
                                     f"{layers} decoder layers: give {layers} or fewer")


def _question(config: DemoConfig) -> None:
    """The demo's text, refused with the flag it came from (``--choices: need at least 2 choices, got 1``)."""
    try:
        check_question(config.question, config.choices, config.context)
    except MMAdapterError as error:
        text = str(error)
        flag = "--question" if "question" in text else "--context" if "context" in text else "--choices"
        raise MMAdapterError(f"{flag}: {text}") from None


def _alpaca_data(data: str, split: str) -> None:
    """A local file is peeked at (its kind, its first records); a hub id is left to datasets."""
    if is_hub_dataset(data):
        return
    check_local_split(data, split)
    peek_alpaca_file(data)


def _scienceqa_source(source: ScienceQASource, splits: dict[str, str]) -> None:
    """Exactly one source; an official folder holds problems.json, and pid_splits.json has every split asked for."""
    source.require()
    if source.data is None:
        return
    root = _folder("--data", source.data)
    for name in ("problems.json", "pid_splits.json"):
        if not (root / name).exists():
            raise MMAdapterError(f"--data {root}: no {name} in it (an official-layout ScienceQA folder holds "
                                 "problems.json, pid_splits.json and captions.json)")
        require_file(root / name)
    for flag, split in splits.items():
        try:
            read_split(root, split)
        except MMAdapterError as error:
            raise MMAdapterError(f"{flag} {split}: {error}") from None


def _folder(flag: str, path: str) -> Path:
    folder = Path(path)
    if not folder.exists():
        raise MMAdapterError(f"{flag} {path}: no such folder")
    if not folder.is_dir():
        hint = " (give the folder holding it)" if folder.name == "problems.json" else ""
        raise MMAdapterError(f"{flag} {path}: is a file, expected a folder{hint}")
    return folder


def _file(flag: str, path: str | None, what: str = "file") -> None:
    if path is not None:
        try:
            regular_file_size(path, what)
        except MMAdapterError as error:
            raise MMAdapterError(f"{flag} {error}") from None


def _audio_encoder(spec: str | None) -> None:
    """A Whisper folder, model.bin part or package that is not there: before the data and the base load."""
    if spec is not None:
        try:
            resolve_source(spec)
        except MMAdapterError as error:
            raise MMAdapterError(f"--audio-encoder: {error}") from None


def _out(out: str | None) -> None:
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise MMAdapterError(f"--out {out}: exists and is not a folder")
