"""``mm-adapter plan RECIPE``: what a training recipe needs before anything is downloaded.

The recipe (a name such as ``alpaca-llama7b``, as ``--config`` takes it; the older ``llama7b-alpaca`` too; or a
recipe / config.yaml file) is
read into its training command's config, the model is laid out on the meta device
(``mm_adapter.training.memory_plan``), and the result holds the parameter counts, each term of one GPU's memory, the data's size and the schedule on ``gpus``
GPUs. No weights and no data are downloaded; a local data file is read to count it.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mm_adapter.errors import MMAdapterError
from mm_adapter.files.config_file import check_settings, read_config_file
from mm_adapter.jobs.configs.plan import PlanConfig
from mm_adapter.jobs.configs.training import TrainAlpacaConfig, TrainScienceQAConfig
from mm_adapter.model.family import text_config
from mm_adapter.recipes import find_recipe as shipped_recipe
from mm_adapter.training import memory_plan as model_plan
from mm_adapter.training.trainer import effective_lr

# recipe prefix -> (the command it configures, its config class)
RECIPE_COMMANDS = {"alpaca": ("train alpaca", TrainAlpacaConfig), "scienceqa": ("train scienceqa", TrainScienceQAConfig)}
PLACEHOLDERS = {"out": "-", "data": ""}  # required settings a recipe may leave to the command line
# Records in the train split of hub datasets the recipes name (so planning needs no download).
KNOWN_SIZES = {("tatsu-lab/alpaca", "train"): 52_002, ("derek-thomas/ScienceQA", "train"): 12_726}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


@dataclass
class Recipe:
    path: Path
    command: str
    config: Any  # TrainAlpacaConfig or TrainScienceQAConfig


@dataclass
class DataSize:
    """Records and tokens of one epoch; ``tokens`` is exact when ``exact``, else records x max_seq_len (a bound)."""

    source: str
    records: int | None
    how: str
    tokens: int | None
    exact: bool = False


@dataclass
class PlanResult:
    recipe: Recipe
    architecture: model_plan.Architecture
    layers: int  # decoder layers of the base
    counts: model_plan.ParameterCounts
    run: model_plan.RunShape
    strategy: str  # the recipe's, auto resolved as the trainer resolves it on ``gpus`` GPUs
    gpus: int
    gpu_memory_gib: float
    memory: list[model_plan.MemoryItem]
    needed: int | None  # GPUs of gpu_memory_gib needed under the recipe's strategy (None: none suffice)
    needed_sharded: int | None  # the same under FSDP
    data: DataSize
    effective_batch: int
    lr: float
    steps_per_epoch: int | None
    total_steps: int | None

    @property
    def total_bytes(self) -> float:
        return model_plan.total(self.memory)


def find_recipe(name: str) -> Path:
    """The recipe file ``name`` means: a file, or a shipped recipe by its name (``alpaca-llama7b``) or an older
    spelling (``llama7b-alpaca``); else one line listing the recipes."""
    if Path(name).is_file():
        return Path(name)
    return shipped_recipe(name, tuple(RECIPE_COMMANDS))


def _prefix(path: Path, data: dict) -> str:
    """Which command a recipe configures: its ``command`` setting (a written config.yaml) or its file name."""
    command = data.get("command")
    for prefix, (words, _) in RECIPE_COMMANDS.items():
        if command == words or (command is None and path.name.startswith(f"{prefix}-")):
            return prefix
    raise MMAdapterError(f"{path}: cannot tell which command it configures; name it alpaca-*.yaml or "
                         "scienceqa-*.yaml, or add `command: train alpaca` / `command: train scienceqa`")


def build_config(cls: type, data: dict, source: str, defaults: Any = None, prefix: str = "") -> Any:
    """``cls`` from a recipe mapping, nested settings merged over the field's default; unknown keys refused."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {} if defaults is None else {name: getattr(defaults, name) for name in fields}
    for key, value in data.items():
        if key not in fields:
            raise MMAdapterError(f"{source}: unknown setting {prefix}{key} (known: {', '.join(sorted(fields))})")
        if dataclasses.is_dataclass(hints[key]):
            if not isinstance(value, dict):
                raise MMAdapterError(f"{source}: {prefix}{key} must be a mapping of {hints[key].__name__} settings")
            value = build_config(hints[key], value, source, _field_default(fields[key], values), f"{key}.")
        values[key] = value
    try:
        return cls(**values)
    except (TypeError, ValueError) as error:  # ConfigError (an MMAdapterError) passes through with its field
        raise MMAdapterError(f"{source}: {error}") from None


def _field_default(field: dataclasses.Field, values: dict) -> Any:
    """The value a nested setting is merged over: the one already built, else the field's default."""
    if field.name in values:
        return values[field.name]
    return field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default


def read_recipe(name: str) -> Recipe:
    """The recipe ``name`` as its training command's config (required settings it leaves out get placeholders)."""
    path = find_recipe(name)
    data = read_config_file(path)  # bounded, alias-free, typed below
    command, cls = RECIPE_COMMANDS[_prefix(path, data)]
    settings = {key: value for key, value in data.items() if key != "command"}
    check_settings(cls, settings, str(path))
    required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING}
    settings = {**{k: v for k, v in PLACEHOLDERS.items() if k in required}, **settings}
    return Recipe(path, command, build_config(cls, settings, str(path)))


def _local_tokenizer(base: str):
    """The tokenizer of a local model folder, or None (hub ids and Meta folders are not read: no downloads)."""
    folder = Path(base)
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def _local_examples(config: Any, tokenizer) -> tuple[str, list, list | None]:
    """(source, records, encoded examples or None) of a recipe whose data is a local file or folder."""
    if isinstance(config, TrainAlpacaConfig):
        from mm_adapter.data.alpaca import encode_alpaca, read_alpaca

        records = read_alpaca(config.data, skip_bad=config.skips_bad, split=config.split, limit=config.limit).records
        encoded = encode_alpaca(tokenizer, records, config.max_seq_len)[0] if tokenizer else None
        return config.data, records, encoded
    from mm_adapter.data.problems import encode_problems, load_problems

    source = config.source.data or config.source.hf
    problems = load_problems(config.source, config.train_split, config.captions, config.limit, say=lambda _: None)
    encoded = (encode_problems(tokenizer, problems, config.format, config.captions, config.max_seq_len)[0]
               if tokenizer else None)
    return source, problems, encoded


def data_size(config: Any) -> DataSize:
    """Records and tokens per epoch: counted from local data, else a known hub dataset's size, else the limit."""
    if isinstance(config, TrainAlpacaConfig):
        source, split = config.data, config.split
    else:
        source, split = config.source.data or config.source.hf or "", config.train_split
    limit, length = config.limit, config.max_seq_len
    if source and Path(source).exists():
        where, records, encoded = _local_examples(config, _local_tokenizer(config.model.base))
        if encoded is not None:
            return DataSize(where, len(records), "counted in the local data", sum(len(e["input_ids"]) for e in encoded),
                            exact=True)
        return DataSize(where, len(records), "counted in the local data", len(records) * length)
    known = KNOWN_SIZES.get((source, split))
    if known is not None:
        records = min(known, limit) if limit else known
        return DataSize(source, records, f"the known size of its {split} split; not downloaded", records * length)
    if limit:
        return DataSize(source or "(no data set)", limit, "at most the recipe's limit", limit * length)
    return DataSize(source or "(no data set)", None, "unknown: not local and not a known hub dataset", None)


def resolve_strategy(strategy: str, gpus: int, weight_bytes: float, gpu_bytes: float) -> str:
    """The trainer's choice for ``auto``: fsdp on several GPUs when the bf16 base exceeds half of one GPU's memory."""
    if strategy != "auto":
        return strategy
    return "fsdp" if gpus > 1 and weight_bytes > gpu_bytes / 2 else "ddp"


def _run_shape(config: Any, sharded: bool) -> model_plan.RunShape:
    train = config.train
    return model_plan.RunShape(batch=train.batch_size, seq_len=config.max_seq_len, weight_dtype=config.model.dtype,
                               autocast=train.bf16, sharded=sharded, checkpointing=train.activation_checkpointing)


def plan(config: PlanConfig) -> PlanResult:
    """Counts, per-GPU memory and the schedule of ``config.recipe`` on ``config.gpus`` GPUs (see the module doc)."""
    recipe = read_recipe(config.recipe)
    train_config = recipe.config
    arch = model_plan.architecture(train_config.model.base)
    visual = train_config.visual if isinstance(train_config, TrainScienceQAConfig) and train_config.images else None
    counts = model_plan.count_parameters(arch.config, train_config.adapter, visual)
    gpu_bytes = config.gpu_memory * model_plan.GIB
    strategy = resolve_strategy(train_config.train.strategy, config.gpus, counts.frozen * 2, gpu_bytes)
    run = _run_shape(train_config, sharded=strategy == "fsdp")

    def per_gpu(gpus: int, sharded: bool = run.sharded) -> float:
        shape = dataclasses.replace(run, sharded=sharded)
        return model_plan.total(model_plan.memory_per_gpu(arch.config, train_config.adapter, counts, shape, gpus))

    data = data_size(train_config)
    train = train_config.train
    steps = (model_plan.steps_per_epoch(data.records, train.batch_size, train.accum_steps, config.gpus)
             if data.records else None)
    return PlanResult(
        recipe=recipe, architecture=arch, layers=text_config(arch.config).num_hidden_layers, counts=counts, run=run,
        strategy=strategy, gpus=config.gpus, gpu_memory_gib=config.gpu_memory,
        memory=model_plan.memory_per_gpu(arch.config, train_config.adapter, counts, run, config.gpus),
        needed=model_plan.gpus_needed(per_gpu, gpu_bytes, run.sharded),
        needed_sharded=model_plan.gpus_needed(lambda n: per_gpu(n, True), gpu_bytes, True),
        data=data, effective_batch=train.batch_size * train.accum_steps * config.gpus,
        lr=effective_lr(train, config.gpus), steps_per_epoch=steps,
        total_steps=min(steps * train.epochs, train.max_steps or steps * train.epochs) if steps else None)
