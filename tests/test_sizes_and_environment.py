"""Issue 23, classes 3, 6 and 7: sizes checked before they cost anything, text from the environment decoded as the
user's bytes meant it, and environment settings checked when a command starts.

Sizes: an absurd prompt count, layer count, batch size, accumulation or epoch count is refused at the flag (exit 2
naming it) instead of failing at allocation as "a bug" (exit 1) or running for ever; prompts whose training state
cannot fit the device's memory are refused before allocation; generation never runs past the model's context, also
when the base has no end token. Text: valid UTF-8 arguments under a C/POSIX locale without UTF-8 mode work (they
were refused as "not valid UTF-8", printing the valid bytes); a stdin line that is not UTF-8 is one error line
naming it, and the session goes on (it was "a bug"). Environment: ``MM_ADAPTER_PROGRESS=fancy`` and the other
settings are refused before any work, and no output folder is left behind (it failed mid-job before).
"""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

import pytest
import torch
from entry_point import MM_ADAPTER
from test_alpaca_generate import GREEDY, base_and_adapters, config  # noqa: F401 (fixture)
from test_special_files import ENV, assert_refused, command, refuses
from tiny import tiny_model
from tiny_text import one_thread, records, tiny_tokenizer, write_records  # noqa: F401 (autouse fixture)

from mm_adapter.cli.environment import check_environment
from mm_adapter.errors import MMAdapterError
from mm_adapter.inference.config import SamplingConfig
from mm_adapter.inference.generate import generate_text
from mm_adapter.jobs.generate import generate
from mm_adapter.model.adapter import check_prompt_memory
from mm_adapter.model.config import AdapterConfig


@pytest.fixture(scope="module")
def alpaca(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny base folder and a small Alpaca file."""
    from tiny_text import tiny_base_folder

    folder = tmp_path_factory.mktemp("sizes")
    data = folder / "alpaca.json"
    write_records(data, records(8))
    return tiny_base_folder(folder / "base"), data


# --- sizes ----------------------------------------------------------------------------------------------------

ABSURD = {"--adapter-len": ("1000000000", "must be <= 4096"), "--adapter-layers": ("100000", "must be <= 1024"),
          "--batch-size": ("1000000000", "must be <= 1048576"), "--accum-steps": ("1000000000", "must be <= 1048576"),
          "--epochs": ("1000000000", "must be <= 10000"), "--max-new-tokens": ("1000000000", "must be <= 1048576")}


@pytest.mark.parametrize("flag", ABSURD)
def test_an_absurd_size_is_refused_at_the_flag_before_any_work(alpaca, tmp_path, capfd, flag):
    """--adapter-len 1e9 failed at allocation as "a bug" (exit 1); --epochs 1e9 ran for ever: now exit 2 naming
    the flag, and no output folder."""
    base, data = alpaca
    value, needle = ABSURD[flag]
    if flag == "--max-new-tokens":
        argv = ["generate", "--base", str(base), "--instruction", "x", flag, value]
    else:
        argv = ["train", "alpaca", "--data", str(data), "--out", str(tmp_path / "run"), "--base", str(base),
                "--device", "cpu", "--adapter-layers", "2", flag, value]
    code, _, err = command(argv, capfd)
    assert_refused(code, err, flag, needle)
    assert not (tmp_path / "run").exists()


def test_prompts_that_cannot_fit_the_device_are_refused_before_allocation():
    """4096 prompts x 80 layers of LLaMA-65B's width is 43 GiB of training state: more than this machine's RAM (the
    check reads it); a paper-sized adapter passes."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    huge = AdapterConfig(adapter_len=4096, adapter_layers=1024)
    assert 16 * 4096 * 1024 * 8192 > ram
    refuses(MMAdapterError, lambda: check_prompt_memory(huge, 8192, torch.device("cpu")),
            "adapter_len=4096 x adapter_layers=1024", "GiB", "lower --adapter-len")
    check_prompt_memory(AdapterConfig(adapter_len=10, adapter_layers=30), 4096, torch.device("cpu"))


def test_generation_without_an_end_token_stops_at_the_models_context():
    """A base with no end token and a 40-token context, asked for 1000 new tokens: it stops at the context."""
    tokenizer = tiny_tokenizer()
    model = tiny_model("llama-gqa", vocab_size=len(tokenizer), max_position_embeddings=40)
    model.generation_config.eos_token_id = None
    prompt = "What colour is the sky ?"
    length = len(tokenizer(prompt)["input_ids"])
    text = generate_text(model, tokenizer, prompt, SamplingConfig(max_new_tokens=1000, temperature=0))
    assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= 40 - length
    refuses(MMAdapterError, lambda: generate_text(model, tokenizer, "sky " * 45, GREEDY), "the prompt takes",
            "context of the model (40 tokens)")


# --- text from the environment --------------------------------------------------------------------------------

def c_locale(**extra: str) -> dict[str, str]:
    """A C locale without Python's UTF-8 mode: argv, file names and stdio are ASCII to Python."""
    env = {key: value for key, value in ENV.items() if not key.startswith("LC_") and key not in ("LANG", "PYTHONUTF8")}
    return {**env, "LC_ALL": "C", "PYTHONUTF8": "0", **extra}


def test_valid_utf8_arguments_work_under_a_c_locale(tmp_path):
    """``table café.json`` under LC_ALL=C PYTHONUTF8=0: the file is found and named correctly (it was refused as
    "not valid UTF-8 text: b'caf\\xc3\\xa9.json'")."""
    missing = tmp_path / "café.json"
    problems = tmp_path / "données"
    done = subprocess.run([MM_ADAPTER, "table", str(missing), "--problems", str(problems)], capture_output=True,
                          env=c_locale(), timeout=120)
    err = done.stderr.decode("utf-8")
    assert done.returncode == 2 and err.count("\n") == 1, err
    assert err.startswith("error: ") and "données" in err and "not valid UTF-8" not in err, err


def test_arguments_that_are_not_utf8_are_refused_showing_their_bytes(tmp_path):
    done = subprocess.run([MM_ADAPTER.encode(), b"table", b"caf\xe9.json", b"--problems", b"x"], capture_output=True,
                          env=c_locale(), timeout=120)
    assert done.returncode == 2
    assert done.stderr == b"error: a command-line argument is not valid UTF-8 text: b'caf\\xe9.json'; pass text in " \
                          b"UTF-8\n"


def test_a_stdin_line_that_is_not_utf8_is_named_and_skipped(base_and_adapters, capsys, monkeypatch):  # noqa: F811
    """Interactive generate reads stdin's bytes: a Latin-1 line is one error line naming it, the next line is
    answered (before: a UnicodeDecodeError or lone surrogates in the tokenizer, "a bug")."""
    base, (alpha, _) = base_and_adapters
    stdin = io.TextIOWrapper(io.BytesIO(b"caf\xe9 ?\nWhat colour is the sky ?\n"), encoding="utf-8")
    monkeypatch.setattr("sys.stdin", stdin)
    result = generate(config(base, [alpha]))
    err = capsys.readouterr().err
    assert "error: stdin line 1 is not UTF-8 text (byte 0xe9 at column 4); skipped" in err
    assert len(result.answers) == 1


def test_a_stdin_line_of_lone_surrogates_is_refused_too(base_and_adapters, capsys):  # noqa: F811
    """What Python's UTF-8 mode makes of such a line (surrogateescape) never reaches the tokenizer either."""
    base, (alpha, _) = base_and_adapters
    result = generate(config(base, [alpha]), lines=["caf\udce9 ?\n", "What colour is the sky ?\n"])
    assert "line 1 is not UTF-8 text (character '\\udce9' at column 4); skipped" in capsys.readouterr().err
    assert len(result.answers) == 1


def test_a_non_utf8_stdin_line_through_the_real_command(base_and_adapters):  # noqa: F811
    base, (alpha, _) = base_and_adapters
    done = subprocess.run([MM_ADAPTER, "generate", "--base", str(base), "--adapter", str(alpha),
                           "--max-new-tokens", "3", "--temperature", "0"], input=b"caf\xe9 ?\nWhat colour ?\n",
                          capture_output=True, env=ENV, timeout=300)
    assert done.returncode == 0 and b"Traceback" not in done.stderr, done.stderr
    assert b"error: stdin line 1 is not UTF-8 text (byte 0xe9 at column 4); skipped" in done.stderr


# --- environment settings -------------------------------------------------------------------------------------

BAD_ENV = {"MM_ADAPTER_PROGRESS": "fancy", "MM_ADAPTER_DEBUG": "yes", "MM_ADAPTER_ALLOW_DOWNLOAD": "true",
           "MM_ADAPTER_KILL_AT_STEP": "five", "MM_ADAPTER_CACHE": ""}


@pytest.mark.parametrize("name", BAD_ENV)
def test_a_bad_environment_setting_is_refused_at_start(alpaca, tmp_path, name):
    """Through the real command: one line naming the variable, exit 2, and no output folder (the progress style
    was read at the first bar, after the folder was made)."""
    base, data = alpaca
    done = subprocess.run([MM_ADAPTER, "train", "alpaca", "--data", str(data), "--out", str(tmp_path / "run"),
                           "--base", str(base), "--device", "cpu", "--adapter-layers", "2"],
                          capture_output=True, text=True, env={**ENV, name: BAD_ENV[name]}, timeout=300)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"error: environment variable {name}=")
    assert not (tmp_path / "run").exists()


def test_good_environment_settings_pass(tmp_path):
    check_environment({"MM_ADAPTER_PROGRESS": "Lines", "MM_ADAPTER_DEBUG": "1", "MM_ADAPTER_ALLOW_DOWNLOAD": "0",
                       "MM_ADAPTER_KILL_AT_STEP": "5:SIGTERM", "MM_ADAPTER_CACHE": str(tmp_path)})
    (tmp_path / "file").write_text("")
    refuses(MMAdapterError, lambda: check_environment({"MM_ADAPTER_CACHE": str(tmp_path / "file")}),
            "MM_ADAPTER_CACHE", "not a folder")
    refuses(MMAdapterError, lambda: check_environment({"MM_ADAPTER_KILL_AT_STEP": "5:SIGNOPE"}), "unknown signal")
