"""How ScienceQA problems are answered and tabled (torch-free: the command line builds flags from these)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mm_adapter.errors import ConfigError
from mm_adapter.fields import check, option
from mm_adapter.scienceqa.prompts import PromptFormat

MODES = ("score", "generate")
FORMATS = tuple(f.value for f in PromptFormat)
DEFAULT_FORMAT = PromptFormat.QCM_A.value


@dataclass(frozen=True)
class EvalConfig:
    """How to answer the problems."""

    mode: str = option("score", choices=MODES)
    """score: compare the options' log-probabilities (always an answer); generate: decode greedily and read the answer"""
    format: str | None = option(None, choices=FORMATS)
    """prompt format (None: the one the adapter file records, else QCM-A; QCM-T answers by option text)"""
    captions: bool = True
    """image questions get their caption as context (the benchmark's text-only setting)"""
    batch_size: int = 8
    """problems per forward"""
    bf16: bool = False
    """bf16 autocast; off by default so a score does not depend on the device's bf16 support (training's default is
    on; the precision used is printed at the start)"""
    max_new_tokens: int = 32
    """generate mode: tokens decoded per answer"""
    stop_at_newline: bool = True
    """generate mode: stop an answer at its first newline"""
    calibrate: bool = False
    """score mode: subtract from each option's score its score after the content-free prompt (question and context
    "N/A", the same options, no image), so options the model favours whatever the question lose that edge; one
    more forward per batch"""

    def __post_init__(self) -> None:
        check(self, "mode", choices=MODES)
        if self.format is not None:
            try:
                object.__setattr__(self, "format", PromptFormat.parse(self.format).value)
            except ValueError as error:
                raise ConfigError("format", str(error)) from None
        check(self, "batch_size", low=1, integer=True)
        check(self, "max_new_tokens", low=1, integer=True)
        if self.calibrate and self.mode != "score":
            raise ConfigError("calibrate", "calibrates score mode's option scores; generate mode has none")
        if self.mode == "score" and not PromptFormat.parse(self.prompt_format).answer_first:
            raise ConfigError("format", f"{self.prompt_format} states the answer after the lecture and solution, "
                                        "so score mode cannot read it; answer with --mode generate (and "
                                        "--max-new-tokens 512), or train on QCM-ALE (the answer first)")

    @property
    def prompt_format(self) -> str:
        """The format answered in when none was chosen: QCM-A, the paper's."""
        return self.format or DEFAULT_FORMAT

    def identity(self) -> dict[str, Any]:
        """The fields that change the answers (batch size does not, beyond float rounding)."""
        found = {"mode": self.mode, "format": self.prompt_format, "captions": self.captions, "bf16": self.bf16}
        if self.calibrate:  # only when on: partial files of uncalibrated runs keep their identity
            found["calibrate"] = True
        if self.mode == "generate":
            found |= {"max_new_tokens": self.max_new_tokens, "stop_at_newline": self.stop_at_newline}
        return found


@dataclass
class TableConfig:
    """Score ScienceQA prediction files into the official table (NAT SOC LAN TXT IMG NO G1-6 G7-12 Avg)."""

    predictions: list[str] = option(positional=True, nargs="+", metavar="PREDICTIONS")
    """official predictions JSON files ({"results": {pid: index}}) or eval output folders"""
    problems: str | None = None
    """problems.json, or the folder holding it (None: the one the eval folders' records name)"""
    name: list[str] | None = option(None, nargs="+", metavar="NAME")
    """row names, one per PREDICTIONS in order (None: each row's method, run, format and split)"""
    reference: str | None = None
    """published tables JSON: {method: {column: percent}}"""
    out: str | None = None
    """output folder: table.md, table.csv, table.json and table.png (with --costs also costs.png; and config.yaml)"""
    json: str | None = None
    """write every table as JSON here ('-': stdout)"""
    markdown: str | None = None
    """write the Markdown table here ('-': stdout, the default without --out)"""
    csv: str | None = None
    """write the rows as CSV here ('-': stdout)"""
    plot: str | None = None
    """write a grouped bar chart PNG here"""
    bootstrap: int = 1000
    """bootstrap resamples for 95% intervals (0: none); the same default as eval scienceqa's"""
    seed: int = 0
    """bootstrap seed"""
    mcnemar: bool = False
    """McNemar test between every pair of files"""
    mcnemar_against: str | None = None
    """McNemar test of every other row against the row of this method name only (implies the test)"""
    costs: bool = False
    """extra columns from each eval folder's training run: trainable parameters, training wall time, median s/step,
    peak memory, adapter size"""
    cost_plot: str | None = None
    """with --costs: write a PNG of each row's Avg (and interval) against its trainable parameters, log scale"""
    title: str = "ScienceQA"
    """title of the chart (name the data set)"""

    def __post_init__(self) -> None:
        check(self, "bootstrap", low=0, integer=True)
        check(self, "seed", low=0, integer=True)
        if self.cost_plot is not None and not self.costs:
            raise ConfigError("cost_plot", "plots the --costs columns; add --costs")
