"""Trainer test fixtures: a tiny word-level tokenizer, learnable Alpaca-style records, a tiny base folder,
and the Alpaca training job with tiny settings (as a config for the job function, and as the same
settings in flags for ``mm-adapter train alpaca``)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from mm_adapter import AdapterConfig, TrainConfig
from mm_adapter.data.alpaca import PROMPT_NO_INPUT, PROMPT_WITH_INPUT
from mm_adapter.jobs.configs.training import TrainAlpacaConfig
from mm_adapter.model.config import ModelOptions
from tiny import tiny_model

SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]
COLOURS = ["red", "green", "blue", "yellow", "black", "white"]
THINGS = ["apple", "sky", "grass", "sun", "coal", "snow", "car", "hat", "cup", "door", "kite", "boat"]


@pytest.fixture(autouse=True)
def one_thread():
    """Two shared cores: one thread per process is ~10x faster for tiny models than two fighting threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Whitespace/punctuation word-level tokenizer covering the templates and the records below."""
    words = set()
    for text in (PROMPT_WITH_INPUT, PROMPT_NO_INPUT, "What colour is the ? It is . Say the word backwards",
                 " ".join(COLOURS + THINGS), "{ }"):
        words.update(word for word, _ in pre_tokenizers.Whitespace().pre_tokenize_str(text))
    vocab = {token: i for i, token in enumerate(SPECIALS + sorted(words))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def records(n: int, seed: int = 0) -> list[dict]:
    """Records whose answer is a fixed function of the question, so a tiny adapter can learn them."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        thing = rng.choice(THINGS)
        colour = COLOURS[THINGS.index(thing) % len(COLOURS)]
        if rng.random() < 0.5:
            out.append({"instruction": f"What colour is the {thing} ?", "input": "", "output": f"It is {colour} ."})
        else:
            out.append({"instruction": "What colour is the ?", "input": thing, "output": f"{colour} {colour} ."})
    return out


def write_records(path: Path, items: list, jsonl: bool = False) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in items) if jsonl else json.dumps(items))
    return path


def tiny_base_folder(folder: Path) -> Path:
    """A tiny Llama (GQA) with the tiny tokenizer, saved so scripts can load it with ``--base folder``."""
    tokenizer = tiny_tokenizer()
    model = tiny_model("llama-gqa", vocab_size=len(tokenizer), max_position_embeddings=512, initializer_range=0.2)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


REPO = Path(__file__).resolve().parents[1]

# The tiny run's training settings; `arguments` spells the same run as flags (test_train_resume checks they agree).
TINY_TRAIN = dict(epochs=2, warmup_epochs=0.5, batch_size=4, lr=2e-2, bf16=False, checkpoint_every=3,
                  progress=False)


def alpaca_config(base: Path, data: Path, out: Path, **train) -> TrainAlpacaConfig:
    """The tiny run as the job's config; ``train`` overrides TrainConfig fields (epochs=1, resume=True, ...)."""
    return TrainAlpacaConfig(data=str(data), out=str(out), model=ModelOptions(base=str(base), dtype="fp32"),
                             adapter=AdapterConfig(adapter_len=4, adapter_layers=3),
                             train=TrainConfig(**{**TINY_TRAIN, **train}))


def arguments(base: Path, data: Path, out: Path, *extra: str) -> list[str]:
    """The tiny run as flags of `mm-adapter train alpaca` (run as a process by test_train_resume)."""
    return ["--base", str(base), "--data", str(data), "--out", str(out), "--adapter-len", "4", "--adapter-layers", "3",
            "--epochs", "2", "--warmup-epochs", "0.5", "--batch-size", "4", "--lr", "2e-2", "--dtype", "fp32",
            "--no-bf16", "--checkpoint-every", "3", "--no-progress", *extra]


def finetune_here(base: Path, data: Path, out: Path, **train):
    """``train_alpaca`` in this process on one thread (saves ~10 s of imports per run on two busy cores)."""
    from mm_adapter.jobs.train_alpaca import train_alpaca

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_alpaca(alpaca_config(base, data, out, **train))
    finally:
        torch.set_num_threads(previous)


def command_here(argv: list[str], capsys=None) -> tuple[int, str, str]:
    """``mm-adapter ARGV`` through ``mm_adapter.cli.main`` in this process, on one thread:
    (exit code, stdout, stderr); the output is read from ``capsys`` when given."""
    from mm_adapter.cli import main

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    if capsys is not None:
        capsys.readouterr()
    try:
        code = main(argv)
    finally:
        torch.set_num_threads(previous)
    out, err = capsys.readouterr() if capsys is not None else ("", "")
    return code, out, err
