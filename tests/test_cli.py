"""The `mm-adapter` front door: flags generated from the config dataclasses, recipes and written configs that
reproduce a run, one-line errors with exit 2, fast help, the older script names as thin shells."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mm_adapter.cli import main
from mm_adapter.cli.commands import BY_WORDS, COMMANDS
from mm_adapter.cli.parse import build_parser, parse
from mm_adapter.files.output_folder import output_folder, write_config
from mm_adapter.jobs.configs.training import TrainAlpacaConfig, TrainScienceQAConfig

REPO = Path(__file__).resolve().parents[1]
TRAIN_ALPACA, TRAIN_SQA = BY_WORDS[("train", "alpaca")], BY_WORDS[("train", "scienceqa")]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def option_actions(command):
    """(action, the help text argparse will print for it) for every flag of the command."""
    parser = build_parser(command)
    parser._preprocessing()
    formatter = parser._get_formatter()
    return [(a, formatter._get_help_string(a)) for a in parser._actions
            if a.option_strings and a.dest not in ("help", "config")]


def test_help_of_every_command_imports_neither_torch_nor_transformers():
    """`--help` must be fast: it may not import torch or transformers (1-3 s each on this machine)."""
    words = [["--help"], *[[*c.words, "--help"] for c in COMMANDS]]
    code = ("import sys, contextlib, io\nfrom mm_adapter.cli import main\n"
            f"for argv in {words!r}:\n"
            "    with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "        assert main(argv) == 0, argv\n"
            "    assert 'usage' in out.getvalue(), argv\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'open_clip') if m in sys.modules)\n"
            "assert not heavy, heavy\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.name)
def test_every_flag_has_help_a_default_and_dashes(command):
    """Each flag documents itself (the field's docstring), shows its default, and is spelled with dashes."""
    for action, shown in option_actions(command):
        long = [o for o in action.option_strings if o.startswith("--")]
        assert all("_" not in o for o in long), long
        assert action.help and action.help.strip(), f"{long} has no help"
        assert "__TEMP__" not in action.help, f"{long}: simple_parsing found no docstring (a field split over lines)"
        if not action.required:
            assert "%(default)s" in shown, f"{long} does not show its default"


def test_bools_take_the_documented_no_forms(capsys):
    """Documented spellings such as --no-captions and --no-progress keep working (simple_parsing says --nofoo)."""
    config = parse(TRAIN_SQA, ["--out", "o", "--data", "d", "--no-captions", "--no-progress", "--images"])
    assert config.captions is False and config.train.progress is False and config.images is True
    assert parse(TRAIN_SQA, ["--out", "o", "--data", "d"]).captions is True


def test_flags_reach_every_nested_config():
    """A flag lands in its own section: adapter, trainer, model and visual settings from one command line."""
    config = parse(TRAIN_SQA, ["--out", "o", "--data", "d", "--adapter-len", "5", "--epochs", "2", "--dtype", "fp32",
                               "--clip-layers", "6,12", "--clip-model", "ViT-B-32", "--betas", "0.8", "0.9"])
    assert config.adapter.adapter_len == 5 and config.train.epochs == 2 and config.model.dtype == "fp32"
    assert config.visual.clip_layers == (6, 12) and config.visual.clip_model == "ViT-B-32"
    assert config.train.betas == (0.8, 0.9) and config.source.data == "d"


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.report != "demo"], ids=lambda c: c.name)
def test_a_written_config_reproduces_the_run(tmp_path, command):
    """config.yaml, passed back with --config, gives the same config the run had (every command)."""
    argv = {
        "train alpaca": ["--data", "a.json", "--out", "o", "--epochs", "2", "--adapter-layers", "4", "--no-bf16"],
        "train scienceqa": ["--data", "d", "--out", "o", "--images", "--clip-layers", "3,6", "--lr", "0.01"],
        "eval scienceqa": ["--split", "test", "--hf", "x", "--out", "o", "--mode", "generate", "--limit", "5"],
        "ablate scienceqa": ["--data", "d", "--out", "o", "--images", "--layers", "8", "16", "--lengths", "--calibrate"],
        "table": ["a.json", "b.json", "--problems", "p.json", "--bootstrap", "10", "--mcnemar"],
        "generate": ["--adapter", "a.safetensors", "b.safetensors", "--use", "b", "--temperature", "0"],
        "serve": ["--port", "0", "--host", "0.0.0.0", "--format", "QCM-T"],
        "convert": ["in.pth", "out.safetensors", "--from", "official", "--adapter-len", "4"],
        "push": ["--adapter", "runs/skill", "--repo", "org/skill", "--private"],
        "main": ["--n-train", "12", "--clip-layers", "2", "--no-hub", "--threads", "1"],
        "plan": ["llama7b-alpaca", "--gpus", "4", "--gpu-memory", "40"],
        "data synthetic-images": ["sets/images", "--n-train", "5", "--seed", "3"],
        "data synthetic-video": ["sets/clips", "--n-val", "2", "--overwrite"],
        "data synthetic-audio": ["sets/audio", "--n-test", "4", "--seed", "1"],
        "data spoken-context": ["sqa", "sets/spoken", "--splits", "train", "test", "--seed", "2"],
    }[command.name]
    config = parse(command, argv)
    written = write_config(tmp_path, command.name, config)
    assert written.read_text().startswith(f"# mm-adapter {command.name} --config ")
    assert parse(command, ["--config", str(written)]) == config


def test_flags_override_a_config_file_and_the_file_overrides_defaults(tmp_path):
    """Precedence: command-line flag > --config file > the dataclass default."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: a.json\nout: o\ntrain:\n  epochs: 2\n  lr: 0.5\nadapter:\n  adapter_len: 3\n")
    config = parse(TRAIN_ALPACA, ["--config", str(recipe), "--epochs", "7"])
    assert (config.train.epochs, config.train.lr, config.adapter.adapter_len) == (7, 0.5, 3)
    assert config.train.batch_size == TrainAlpacaConfig(data="x", out="y").train.batch_size


def test_recipes_are_the_documented_presets():
    """alpaca-paper and scienceqa-smollm2-cpu state the commands' defaults; smollm2-cpu (also --preset) differs."""
    paper = parse(TRAIN_ALPACA, ["--data", "a", "--out", "o", "--config", "paper"])
    assert paper == TrainAlpacaConfig(data="a", out="o")
    assert parse(TRAIN_SQA, ["--out", "o", "--config", "smollm2-cpu"]) == TrainScienceQAConfig(out="o")
    cpu = parse(TRAIN_ALPACA, ["--data", "a", "--out", "o", "--preset", "smollm2-cpu"])
    assert (cpu.limit, cpu.train.epochs, cpu.train.lr, cpu.model.dtype) == (1000, 1, 3e-3, "bf16")


@pytest.mark.parametrize("text, message", [
    ("epochs: 2\n", "unknown setting epochs"),
    ("train:\n  lrr: 0.1\n", "unknown setting train.lrr"),
    ("train: 3\n", "train must be a mapping"),
    ("- a\n- b\n", "must hold a mapping"),
    ("train: [unclosed\n", "not a valid YAML file"),
])
def test_a_bad_config_file_is_one_line_naming_file_and_key(tmp_path, capsys, text, message):
    """A recipe with an unknown key, a wrong shape or broken YAML: one line naming the file, exit 2."""
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    code, out, err = run_cli(capsys, "train", "alpaca", "--data", "a", "--out", str(tmp_path / "o"),
                             "--config", str(recipe))
    assert code == 2 and err.count("\n") == 1 and message in err and str(recipe) in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv, message", [
    (["train", "alpaca", "--data", "a", "--out", "o", "--batch-size", "0"], "--batch-size: must be >= 1, got 0"),
    (["train", "alpaca", "--data", "a", "--out", "o", "--accum-steps", "0"], "--accum-steps: must be >= 1"),
    (["train", "alpaca", "--data", "a", "--out", "o", "--lr", "-1"], "--lr: must be > 0"),
    (["train", "alpaca", "--data", "a", "--out", "o", "--threads", "-2"], "--threads: must be >= 1"),
    (["train", "alpaca", "--data", "a", "--out", "o", "--epochs", "0"], "--epochs: must be >= 1"),
    (["train", "alpaca", "--data", "a", "--out", "o", "--epochs", "two"], "invalid int value: 'two'"),
    (["train", "scienceqa", "--data", "d", "--out", "o", "--val-limit", "-1"], "--val-limit: must be >= 1"),
    (["train", "scienceqa", "--data", "d", "--out", "o", "--format", "QCM-X"], "invalid choice: 'QCM-X'"),
    (["eval", "scienceqa", "--split", "t", "--data", "d", "--out", "o", "--bootstrap", "-1"], "--bootstrap"),
    (["eval", "scienceqa", "--data", "d", "--out", "o"], "required: --split"),
    (["serve", "--port", "70000"], "--port: must be <= 65535"),
    (["convert", "--from", "nope", "a", "b"], "invalid choice: 'nope'"),
    (["push", "--adapter", "a"], "required: --repo"),
    (["train", "alpaca", "--data", "a", "--out", "o", "--lora-rank", "4"],
     "--lora-rank: applies to --method lora, not llama-adapter"),
    (["train", "alpaca", "--data", "a", "--out", "o", "--config", "no-such-recipe"], "no such file or recipe"),
    (["fly"], "unknown command 'fly'"),
])
def test_bad_flags_are_one_line_and_exit_2_before_any_work(tmp_path, capsys, monkeypatch, argv, message):
    """Every bad flag value: one line on stderr naming the flag, exit 2, no traceback, nothing written."""
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, *argv)
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert "Traceback" not in err and list(tmp_path.iterdir()) == []


def test_a_run_refused_on_its_input_leaves_no_new_folder(tmp_path, capsys):
    """A run that fails before writing anything leaves no new output folder (or parents) behind."""
    code, _, err = run_cli(capsys, "train", "alpaca", "--data", str(tmp_path / "missing.json"),
                           "--out", str(tmp_path / "new" / "run"))
    assert code == 2 and "missing.json" in err
    assert not (tmp_path / "new").exists()


def test_output_folder_removes_only_what_it_created_and_only_while_empty(tmp_path):
    """The output-folder guard: created parents go away on a failure before any write; written work stays."""
    with pytest.raises(RuntimeError), output_folder(tmp_path / "a" / "b"):
        raise RuntimeError("failed before writing")
    assert not (tmp_path / "a").exists()
    with pytest.raises(RuntimeError), output_folder(tmp_path / "c" / "d") as folder:
        (folder / "metrics.jsonl").write_text("{}\n")
        raise RuntimeError("failed after writing")
    assert (tmp_path / "c" / "d" / "metrics.jsonl").is_file()


def test_an_unexpected_error_says_bug_in_one_line_and_debug_shows_the_traceback(capsys, monkeypatch):
    """A bug is not blamed on the user: exit 1, one line saying so; --debug shows the traceback."""
    import mm_adapter.jobs.convert as convert_job

    def broken(config):
        raise KeyError("surprise")

    monkeypatch.setattr(convert_job, "convert", broken)
    code, _, err = run_cli(capsys, "convert", "a", "b")
    assert code == 1 and err.count("\n") == 1 and "this is a bug" in err and "KeyError" in err
    code, _, err = run_cli(capsys, "--debug", "convert", "a", "b")
    assert code == 1 and "Traceback" in err


def test_python_m_mm_adapter_is_the_same_command():
    """`python -m mm_adapter` and the installed console script print the same help."""
    module = subprocess.run([sys.executable, "-m", "mm_adapter", "--help"], capture_output=True, text=True,
                            timeout=60)
    script = Path(sys.executable).with_name("mm-adapter")
    assert module.returncode == 0 and "train alpaca" in module.stdout
    if script.exists():
        console = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
        assert console.stdout == module.stdout


def test_one_front_door():
    """The command is the way in: scripts/ holds only the README's two commands and the set-up they share (no
    `python scripts/X.py` shells), and the generated sets are subcommands, not modules with parsers of their own."""
    assert sorted(p.name for p in (REPO / "scripts").iterdir()) == ["main.sh", "setup_env.sh", "test.sh"]
    for module in ("scienceqa/synthetic.py", "scienceqa/synthetic_video.py", "scienceqa/synthetic_audio.py",
                   "eval/table.py"):
        text = (REPO / module).read_text()
        assert "argparse" not in text and "__main__" not in text, module


@pytest.mark.parametrize("words, described", [("synthetic-images", "only in the pictures"),
                                              ("synthetic-video", "order of the frames"),
                                              ("synthetic-audio", "only in the recordings")])
def test_the_generated_sets_are_subcommands(words, described, tmp_path, capsys):
    """``mm-adapter data synthetic-images|synthetic-video|synthetic-audio OUT`` write the official layout; --help
    says what."""
    code, out, _ = run_cli(capsys, "data", words, str(tmp_path / "set"), "--n-train", "2", "--n-val", "1",
                           "--n-test", "1")
    assert code == 0 and "wrote 4 problems (train 2, val 1, test 1)" in out, out
    assert json.loads((tmp_path / "set" / "pid_splits.json").read_text()).keys() == {"train", "val", "test"}
    code, _, err = run_cli(capsys, "data", words, str(tmp_path / "bad"), "--n-val", "-1")
    assert code == 2 and err.count("\n") == 1 and "--n-val" in err, err
    assert not (tmp_path / "bad").exists()
    assert main(["--help"]) == 0
    assert described in " ".join(capsys.readouterr().out.split())


def test_command_line_text_that_is_not_utf8_is_refused_in_one_line():
    """Bytes that are not UTF-8 (a question typed in another encoding) are one line and exit 2, not a crash later."""
    done = subprocess.run([sys.executable, "-m", "mm_adapter", "demo", "--question", b"caf\xe9?", "--choices", "a", "b"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "not valid UTF-8" in done.stderr, done.stderr


def test_gate_granularity_flag_reaches_the_adapter_config(capsys):
    """--gate-granularity, generated from AdapterConfig.gate_granularity, lands in the adapter config of both training
    commands (default head, the paper's); a value other than head or layer is one line naming the flag, exit 2."""
    assert parse(TRAIN_ALPACA, ["--data", "a", "--out", "o"]).adapter.gate_granularity == "head"
    for command, argv in ((TRAIN_ALPACA, ["--data", "a", "--out", "o"]), (TRAIN_SQA, ["--data", "d", "--out", "o"])):
        assert parse(command, [*argv, "--gate-granularity", "layer"]).adapter.gate_granularity == "layer"
    code, _, err = run_cli(capsys, "train", "alpaca", "--data", "a", "--out", "o", "--gate-granularity", "channel")
    assert code == 2 and err.count("\n") == 1 and "--gate-granularity" in err and "'channel'" in err, err


def test_a_null_in_a_config_file_means_none_unless_a_flag_says_otherwise(tmp_path):
    """`lr: null` in a recipe selects base_lr scaling (None), though train scienceqa's own default is 5e-3; a flag
    given on the command line still wins over the file's null."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("out: o\ntrain:\n  lr: null\n  grad_clip: 1.0\n")
    config = parse(TRAIN_SQA, ["--config", str(recipe), "--data", "d"])
    assert config.train.lr is None and config.train.grad_clip == 1.0
    assert parse(TRAIN_SQA, ["--config", str(recipe), "--data", "d", "--lr", "0.1"]).train.lr == 0.1
