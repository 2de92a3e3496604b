"""Fine-tune a LLaMA-Adapter on Alpaca instruction data (``mm-adapter train alpaca``).

Under ``torchrun --nproc_per_node N`` it trains with DistributedDataParallel; only rank 0 writes.
"""

from __future__ import annotations

import torch

from ..adapter import attach_adapter, count_trainable
from ..alpaca import encode_alpaca, read_alpaca
from ..base import load_base
from ..errors import MMAdapterError
from ..outputs import output_folder, write_config
from ..train import TrainResult, prepare_out_dir, setup_distributed, train
from ..train_data import PadCollator
from .configs import TrainAlpacaConfig
from .runtime import finish_distributed, prepare, rank_zero_print

COMMAND = "train alpaca"


def train_alpaca(config: TrainAlpacaConfig) -> TrainResult:
    """Read the records, load the base, attach the adapter, train; returns the trainer's result."""
    device = prepare(config.model)
    info = setup_distributed(str(device))
    say = rank_zero_print(info.is_main)
    prepare_out_dir(config.out, config.train.resume, info.is_main, create=False)  # refuse before the slow parts
    data = read_alpaca(config.data, skip_bad=config.skip_bad)
    if data.skipped:
        say(f"skipped {data.skipped} bad record(s) in {data.path}")
    records = data.records[:config.limit] if config.limit else data.records
    model, tokenizer = load_base(config.model.base, dtype=config.model.dtype)
    examples, too_long = encode_alpaca(tokenizer, records, config.max_seq_len)
    if too_long:
        say(f"dropped {too_long} record(s) whose prompt fills max_seq_len={config.max_seq_len}")
    if not examples:
        raise MMAdapterError(f"{data.path}: no record fits max_seq_len={config.max_seq_len}")
    torch.manual_seed(config.train.seed)  # same adapter initialisation on every rank
    attach_adapter(model, config.adapter)
    say(f"{len(examples)} examples, {count_trainable(model):,} trainable parameters, world size {info.world_size}")
    with output_folder(config.out) as out:
        if info.is_main and not config.train.resume:  # a resume keeps the first part's config.yaml (it reproduces
            write_config(out, COMMAND, config)         # the whole run; a refused resume must not touch the folder)
        result = train(model, examples, config.train, PadCollator(tokenizer.pad_token_id), out, device=str(device),
                       identity={"base_dtype": config.model.dtype})
    finish_distributed()
    return result
