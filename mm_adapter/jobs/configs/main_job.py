"""The config of main, the one command that shows the whole path: data, a multimodal adapter on SmolLM2, the test
table and one demo answer, in a fresh folder; its defaults run on a laptop's CPU offline."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Tuple

from mm_adapter.encoders.config import parse_depths
from mm_adapter.eval.config import FORMATS
from mm_adapter.fields import check, check_positive, option
from mm_adapter.model.config import ModelOptions


@dataclass
class MainConfig:
    """The main job: data -> multimodal adapter on SmolLM2 -> test table -> one demo answer, in a fresh folder."""

    data: str | None = None
    """a local official-layout ScienceQA folder with images/ (None: the hub copy if reachable within seconds,
    else a generated image set)"""
    hub: bool = True
    """try the Hugging Face hub copy when no --data is given"""
    out: str | None = None
    """output folder (None: a fresh runs/main-<time>)"""
    runs: str = "runs"
    """parent of the default output folder"""
    n_train: int = 600
    """generated training problems"""
    n_val: int = 60
    """generated val problems"""
    n_test: int = 200
    """generated test problems"""
    epochs: int = 4
    """training epochs"""
    lr: float = 3e-2
    """learning rate"""
    adapter_layers: int = 8
    """top layers adapted (8 of SmolLM2's 30: the backward stops below them)"""
    format: str = option("QCM-T", choices=FORMATS)
    """prompt format (QCM-T: answer by option text, which a 135M model learns; QCM-A: letters)"""
    clip_model: str = "ViT-B-32"
    """open_clip encoder (random weights here: no pretrained CLIP weights can be had offline)"""
    # typing.Tuple: simple_parsing cannot read `tuple[int, ...]` inside a union
    clip_layers: int | Tuple[int, ...] = option(4, type=parse_depths, metavar="N|D1,D2,...")
    """N evenly spaced encoder depths, or explicit 1-based depths"""
    seed: int = 0
    """seed of the generated data and of training"""
    progress: bool = True
    """show progress of training and evaluation (a bar on a terminal, a line every ~10% otherwise)"""
    model: ModelOptions = field(default_factory=lambda: ModelOptions(threads=2))

    def __post_init__(self) -> None:
        check_positive(self, "n_train", "n_val", "n_test", "epochs", "adapter_layers")
        check(self, "lr", low=0, low_open=True)
        check(self, "seed", low=0, integer=True)
