"""Fine-tune a LLaMA-Adapter on Alpaca instruction data (``mm-adapter train alpaca``).

Under ``torchrun --nproc_per_node N`` it trains with DistributedDataParallel (``--strategy ddp``) or with the
frozen base sharded over the processes (``--strategy fsdp``); only rank 0 writes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mm_adapter.data.alpaca import encode_alpaca, read_alpaca
from mm_adapter.errors import MMAdapterError
from mm_adapter.files.output_folder import CONFIG_NAME, Output, outputs_in, write_config
from mm_adapter.jobs.configs.training import TrainAlpacaConfig
from mm_adapter.jobs.recording import record_run
from mm_adapter.jobs.runtime import finish_distributed, job_folder, precision_line, prepare, rank_zero_print
from mm_adapter.methods.attach import Tuned, attach_method
from mm_adapter.methods.folders import ADAPTER_FOLDER, relocated, trainer_export
from mm_adapter.methods.virtual_tokens import context_tokens
from mm_adapter.model.adapter import count_trainable
from mm_adapter.model.adapter_file import save_adapter
from mm_adapter.pretrained import base_metadata
from mm_adapter.training.base_loading import load_training_base
from mm_adapter.training.batches import Example, PadCollator
from mm_adapter.training.process import setup_distributed
from mm_adapter.methods.run_record import RUN_RECORD
from mm_adapter.training.trainer import TrainResult, train, trainer_outputs

COMMAND = "train alpaca"


def alpaca_outputs(out: str | Path) -> list[Output]:
    """Every path the job writes in ``out`` (none may be one of its inputs)."""
    return trainer_outputs(out) + outputs_in("--out", out, [CONFIG_NAME, RUN_RECORD], folders=[ADAPTER_FOLDER])


def _model_and_examples(config: TrainAlpacaConfig, say: Callable[[str], None]
                        ) -> tuple[Tuned, Any, list[Example], dict[str, Any]]:
    """Read the records, load the base, make it trainable by the method, encode (the slow parts); the split's
    sizes go into the run record."""
    data = read_alpaca(config.data, skip_bad=config.skips_bad, split=config.split, limit=config.limit)
    if data.skipped:
        say(data.summary())
    records = data.records
    model, tokenizer = load_training_base(config.model.base, config.model.dtype, config.train, config.model.device)
    torch.manual_seed(config.train.seed)  # same initialisation on every rank
    tuned = attach_method(model, config.tuning, config.adapter, autocast=config.train.bf16)
    examples, too_long = encode_alpaca(tokenizer, records, config.max_seq_len, context=context_tokens(tuned.model))
    if too_long:
        say(f"dropped {too_long} record(s) whose prompt fills max_seq_len={config.max_seq_len}")
    if not examples:
        raise MMAdapterError(f"{data.source}: no record fits max_seq_len={config.max_seq_len}")
    split = {"name": config.split, "records": len(records), "skipped": data.skipped, "too_long": too_long,
             "examples": len(examples)}
    return tuned, tokenizer, examples, {"train": split}


def train_alpaca(config: TrainAlpacaConfig) -> TrainResult:
    """Read the records, load the base, attach the method, train; returns the trainer's result."""
    device = prepare(config.model)
    info = setup_distributed(str(device))
    say = rank_zero_print(info.is_main)
    inputs = {"--data": config.data, "--base": config.model.base}
    with job_folder(config.out, alpaca_outputs(config.out), inputs, lock=info.is_main,
                    resume=config.train.resume) as out:  # refused before the slow parts
        tuned, tokenizer, examples, splits = _model_and_examples(config, say)
        model = tuned.model
        say(tuned.describe())
        say(precision_line(model, config.train.bf16, device))
        say(f"{len(examples)} examples, {count_trainable(model):,} trainable parameters, world size "
            f"{info.world_size}")
        if info.is_main and not config.train.resume:  # a resume keeps the first part's config.yaml (it reproduces
            write_config(out, COMMAND, config)         # the whole run; a refused resume must not touch the folder)
        result = train(model, examples, config.train, PadCollator(tokenizer.pad_token_id), out, device=str(device),
                       identity={"base_dtype": config.model.dtype} | tuned.identity(),
                       export=trainer_export(tuned, lambda m, path: save_adapter(m, path,
                                                                                 extra_metadata=base_metadata(m)),
                                             None, tokenizer))
        if info.is_main:
            record_run(out, COMMAND, tuned, prompt_format=None, source={"--data": config.data}, examples=examples,
                       splits=splits, seed=config.train.seed)
    finish_distributed()
    return relocated(result, tuned.method)
