"""Help that reads like a tool's: the main flags first, headings that say what the flags are about (never a config
class's name), PATH/DIR/FILE/N metavars, booleans shown as typed; no argparse abbreviations, choices in any case,
the nearest command or flag on a miss, one recipe naming scheme for ``plan`` and ``--config``; ``--max-steps``; a
stop signal acknowledged at once."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mm_adapter import AdapterConfig, TrainConfig, attach_adapter
from mm_adapter.cli import main
from mm_adapter.cli.commands import BY_WORDS, COMMANDS
from mm_adapter.cli.parse import parse
from mm_adapter.data.alpaca import AlpacaRecord, encode_alpaca
from mm_adapter.jobs.plan import find_recipe
from mm_adapter.jobs.runtime import precision_line
from mm_adapter.recipes import recipe_names
from mm_adapter.training.batches import PadCollator
from mm_adapter.training.process import stop_requests
from mm_adapter.training.trainer import train
from tiny import tiny_model
from tiny_text import one_thread, records, tiny_tokenizer  # noqa: F401 (autouse fixture)

REPO = Path(__file__).resolve().parents[1]
TRAIN_ALPACA, EVAL = BY_WORDS[("train", "alpaca")], BY_WORDS[("eval", "scienceqa")]


def help_text(command) -> str:
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert main([*command.words, "--help"]) == 0
    return out.getvalue()


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.name)
def test_help_shows_main_flags_first_and_no_internal_names(command):
    """The first heading is "main flags"; no heading names a config class (``TrainConfig ['job.train']``); a path or
    number shows PATH/DIR/FILE/N/X, never a Python type; a boolean shows as ``--x/--no-x`` with no value."""
    text = help_text(command)
    headings = [line[:-1] for line in text.splitlines() if re.fullmatch(r"[a-z][\w ().-]*:", line)]
    assert headings[0] == "main flags", headings
    assert not re.search(r"\w+(Config|Options|Source) \[", text) and "['job" not in text, text
    assert not re.search(r"--[\w-]+ \[?(str|int|float|list)\]?(\s|,|$)", text, re.M), text
    assert "true|false" not in text
    assert text.startswith(f"usage: mm-adapter {command.name} ") and "[flags]" in text.splitlines()[0]


def test_help_of_train_alpaca_reads_like_a_tool():
    text = help_text(TRAIN_ALPACA)
    main_block = text.split("main flags:")[1].split("\n\n")[0]
    for flag in ("--data PATH", "--out DIR", "--limit N", "--max-steps N", "--epochs N", "--strict", "--config FILE"):
        assert flag in main_block, flag
    assert "--bf16/--no-bf16" in text and "--resume/--no-resume" in text


def test_no_abbreviations_and_the_nearest_flag_is_named(capsys, tmp_path):
    """``--lim`` is not silently ``--limit`` (argparse's prefix matching is off); it is refused, naming --limit."""
    code, err = run_cli(capsys, "train", "alpaca", "--data", "a", "--out", str(tmp_path / "o"), "--lim", "40")
    assert code == 2 and err.count("\n") == 1 and "--lim 40" in err and "did you mean --limit?" in err, err
    code, err = run_cli(capsys, "eval", "scienceqa", "--split", "val", "--data", "d", "--out", "o", "--adaptr", "x")
    assert code == 2 and "did you mean --adapter?" in err, err


@pytest.mark.parametrize("argv, nearest", [(["trian", "alpaca"], "train alpaca"),
                                           (["evl", "scienceqa"], "eval scienceqa"), (["tabel"], "table"),
                                           (["data", "synthetic-image"], "data synthetic-images")])
def test_a_misspelt_command_names_the_nearest(capsys, argv, nearest):
    code, err = run_cli(capsys, *argv)
    assert code == 2 and err.count("\n") == 1 and f"did you mean '{nearest}'?" in err, err


def test_a_first_word_alone_lists_its_commands(capsys):
    code, err = run_cli(capsys, "train")
    assert code == 2 and err == "error: `train` needs a second word: train alpaca, train scienceqa (see mm-adapter " \
                                "--help)\n", err


def test_choices_are_taken_in_any_case():
    config = parse(EVAL, ["--split", "val", "--data", "d", "--out", "o", "--format", "qcm-t", "--mode", "SCORE"])
    assert (config.eval.format, config.eval.mode) == ("QCM-T", "score")
    assert parse(TRAIN_ALPACA, ["--data", "a", "--out", "o", "--method", "LoRA"]).tuning.method == "lora"
    ablate = parse(BY_WORDS[("ablate", "scienceqa")], ["--data", "d", "--out", "o", "--gate-inits", "ZERO"])
    assert ablate.gate_inits == ["zero"]


def test_an_optional_number_needs_its_value(capsys):
    """``--limit`` with no number was silently None (no limit); now it is refused."""
    code, err = run_cli(capsys, "train", "alpaca", "--data", "a", "--out", "o", "--limit")
    assert code == 2 and "--limit" in err and "expected one argument" in err, err


@pytest.mark.parametrize("name", ["alpaca-llama7b", "llama7b-alpaca", "llama7b"])
def test_one_recipe_name_in_plan_and_config(name):
    """The file name (alpaca-llama7b) is the name everywhere; the older spellings stay aliases in both places."""
    assert parse(TRAIN_ALPACA, ["--data", "a", "--out", "o", "--config", name]).model.base == \
        parse(TRAIN_ALPACA, ["--data", "a", "--out", "o", "--config", "alpaca-llama7b"]).model.base
    if name != "llama7b":
        assert find_recipe(name).stem == "alpaca-llama7b"
    assert parse(BY_WORDS[("plan",)], [name]).recipe == name


def test_a_recipe_miss_lists_the_valid_names(capsys):
    code, err = run_cli(capsys, "train", "alpaca", "--data", "a", "--out", "o", "--config", "llama-7b")
    assert code == 2 and err.count("\n") == 1 and "did you mean alpaca-llama7b?" in err, err
    assert all(name in err for name in recipe_names("alpaca")) and "scienceqa-" not in err
    code, err = run_cli(capsys, "plan", "llama8b-alpaca")
    assert code == 2 and all(name in err for name in [*recipe_names("alpaca"), *recipe_names("scienceqa")]), err


def test_max_steps_ends_the_run_and_its_schedule(tmp_path):
    """--max-steps stops after that many optimizer steps; the cosine reaches min_lr there, not at the end of the
    epochs the run did not do."""
    tokenizer = tiny_tokenizer()
    examples, _ = encode_alpaca(tokenizer, [AlpacaRecord(**r) for r in records(48)], 512)
    model = tiny_model("llama-gqa", vocab_size=len(tokenizer), max_position_embeddings=512)
    torch.manual_seed(0)
    attach_adapter(model, AdapterConfig(adapter_len=2, adapter_layers=2))
    config = TrainConfig(epochs=3, max_steps=5, warmup_epochs=0, batch_size=4, lr=1e-2, bf16=False, progress=False)
    result = train(model, examples, config, PadCollator(tokenizer.pad_token_id), tmp_path / "run")
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert result.steps == 5 and [line["step"] for line in lines] == [1, 2, 3, 4, 5]
    assert lines[-1]["lr"] < 0.1 * lines[0]["lr"]  # the schedule's end is step 5's
    assert parse(TRAIN_ALPACA, ["--data", "a", "--out", "o", "--max-steps", "7"]).train.max_steps == 7


def test_a_stop_signal_is_acknowledged_at_once(capfd):
    """Ctrl-C during a step (which may take many seconds) is answered by one line at once, not when the step ends."""
    with stop_requests() as stop:
        stop.note(signal.SIGINT, None)
        err = capfd.readouterr().err
    assert "Ctrl-C: stopping after this step" in err and "Ctrl-C again to stop now" in err, err
    with stop_requests(speak=False) as stop:  # the other ranks of a torchrun launch stay quiet
        stop.note(signal.SIGINT, None)
    assert capfd.readouterr().err == ""


def test_defaults_agree_across_commands_and_the_precision_is_said():
    """--bootstrap is 1000 in eval and table alike; --bf16 differs on purpose (training: on; answering: off) and so
    every model command prints the precision it really runs in."""
    eval_config = parse(EVAL, ["--split", "val", "--data", "d", "--out", "o"])
    table = parse(BY_WORDS[("table",)], ["p.json", "--problems", "d"])
    assert eval_config.bootstrap == table.bootstrap == 1000
    model = tiny_model("llama-gqa")
    assert precision_line(model, True, "cpu") == "precision: base weights float32, bf16 autocast on (--dtype, " \
                                                 "--bf16/--no-bf16)"
    assert "bf16 autocast off" in precision_line(model.to(torch.bfloat16), False, "cpu")
    assert "base weights bfloat16" in precision_line(model, False, "cpu")


def test_aliases_are_listed_in_one_order_in_every_process():
    """simple_parsing builds a flag's names from a set and orders them by length only, so `demo --help` showed
    ``--video FILE, --image FILE`` under some hash seeds (1 among them) and ``--image FILE, --video FILE`` under
    others: help and docs that differ between two runs of one command. The field's own name comes first."""
    lines = set()
    for seed in ("1", "4"):
        done = subprocess.run([sys.executable, "-m", "mm_adapter", "demo", "--help"], capture_output=True, text=True,
                              cwd=REPO, env={**os.environ, "PYTHONHASHSEED": seed}, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        lines.add(next(line.strip() for line in done.stdout.splitlines() if "--video" in line))
    assert lines == {"--image FILE, --video FILE"}, lines
