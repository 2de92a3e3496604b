"""Issue 23, class 1: a ``--config`` file (and a ``plan`` recipe) is read as bounded, safe, typed data.

Before anything is formatted or allocated: YAML anchors and aliases are refused (a few hundred bytes of aliases
expand into gigabytes, and the flag parser formats every default while it is built), a file over
``MAX_CONFIG_BYTES`` is refused unread, a value of the wrong type (YAML's implicit dates and numbers where text is
meant, a string or a bool where a number is meant, NaN) is refused naming the setting. Each refusal is one line,
exit 2, and the command's output folder is never created. The shipped recipes and the committed config fixtures
keep loading (tests/test_before_regroup.py, tests/test_recipes.py).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from entry_point import MM_ADAPTER
from test_special_files import ENV, assert_refused, command, refuses

from mm_adapter.errors import MMAdapterError
from mm_adapter.files.config_file import MAX_CONFIG_BYTES, check_settings, read_config_file
from mm_adapter.jobs.configs.training import TrainAlpacaConfig
from mm_adapter.recipes import FOLDER

# A valid setting whose value is 10 nested lists of 9 references each: ~100 bytes per level, 9**10 items once
# formatted (the flag parser formats every default while it is built)
ALIAS_BOMB = "out: [&a [x, x, x, x, x, x, x, x, x], " + ", ".join(
    f"&{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]" for i in range(9)) + "]\n"

# (file text, words the one-line refusal must hold): each a config a user could be handed
BAD_YAML = {
    "alias bomb": (ALIAS_BOMB, ["anchors and aliases are not allowed", "line 1"]),
    "a single alias": ("out: &o runs/x\ndata: *o\n", ["anchors and aliases"]),
    "a merge key": ("base: &b {epochs: 1}\ntrain:\n  <<: *b\n", ["anchors and aliases"]),
    "a date where text is meant": ("out: 2024-01-01\n", ["setting out", "a date 2024-01-01", "quote it"]),
    "a number where text is meant": ("model: {base: 123}\n", ["setting model.base", "an integer 123", "quote it"]),
    "a float where text is meant": ("split: 1.5\n", ["setting split", "expected a string"]),
    "a string where an integer is meant": ("train: {epochs: '5'}\n", ["setting train.epochs", "expected an integer"]),
    "a bool where an integer is meant": ("max_seq_len: yes\n", ["setting max_seq_len", "expected an integer",
                                                                 "a boolean True"]),
    "NaN where a number is meant": ("train: {base_lr: .nan}\n", ["setting train.base_lr", "finite number"]),
    "infinity where a number is meant": ("train: {weight_decay: .inf}\n", ["setting train.weight_decay"]),
    "null where an integer is required": ("max_seq_len: null\n", ["setting max_seq_len", "got null"]),
    "a choice that is not one": ("model: {dtype: fp8}\n", ["setting model.dtype", "expected one of", "fp8"]),
    "a list where a number is meant": ("train: {epochs: [1, 2]}\n", ["setting train.epochs", "a list"]),
    "a mapping where a group is meant as text": ("train: 5\n", ["train must be a mapping", "an integer 5"]),
    "a code-running tag": ("out: !!python/object/apply:os.system ['true']\n", ["not a valid YAML file"]),
    "nesting too deep": ("out: " + "[" * 50_000 + "]" * 50_000 + "\n", ["not a valid YAML file"]),
    "a list of 600,000 items": ("out: [" + "1," * 600_000 + "1]\n", ["config file is", "more than"]),
    "a pair of three numbers": ("train: {betas: [0.9, 0.95, 0.99]}\n", ["setting train.betas", "2 items, got 3"]),
}
BAD_JSON = {
    "NaN literal": ('{"train": {"base_lr": NaN}}', ["not a valid JSON file", "NaN"]),
    "a number out of range": ('{"train": {"base_lr": 1e999}}', ["out of range"]),
    "nesting too deep": ('{"out": ' + "[" * 100_000 + "]" * 100_000 + "}", ["nested too deeply"]),
    "a lone surrogate": ('{"out": "runs/\\ud800"}', ["lone surrogate"]),
    "a string where an integer is meant": ('{"max_seq_len": "512"}', ["setting max_seq_len", "a string '512'"]),
}


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("name, text, needles", [("bad.yaml", *BAD_YAML[case]) for case in BAD_YAML]
                         + [("bad.json", *BAD_JSON[case]) for case in BAD_JSON], ids=[*BAD_YAML, *BAD_JSON])
def test_a_bad_config_is_one_line_naming_the_file_and_setting_before_any_work(tmp_path, capfd, name, text, needles):
    config = _write(tmp_path, name, text)
    code, _, err = command(["train", "alpaca", "--config", str(config), "--data", "x.json", "--out",
                            str(tmp_path / "run")], capfd)
    assert_refused(code, err, str(config), *needles)
    assert not (tmp_path / "run").exists() and config.read_text() == text


def test_an_oversized_config_is_refused_unread(tmp_path):
    """The size is taken from the file system before reading (a recipe is a few hundred bytes)."""
    path = _write(tmp_path, "big.yaml", "# padding\n" * (MAX_CONFIG_BYTES // 10 + 1))
    refuses(MMAdapterError, lambda: read_config_file(path), "big.yaml", "more than")


def test_the_alias_bomb_in_a_real_process_is_refused_promptly_without_memory(tmp_path):
    """The documented command, a fresh interpreter: the 9^10-item expansion is never built (before: a hang while
    the parser formats the defaults); capped at 1 GiB of address space."""
    config = _write(tmp_path, "bomb.yaml", ALIAS_BOMB)
    done = subprocess.run(["bash", "-c", 'ulimit -v 4000000; exec "$@"', "-", MM_ADAPTER, "train", "alpaca",
                           "--config", str(config), "--data", "x.json", "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, env=ENV, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "anchors and aliases" in done.stderr and str(config) in done.stderr


def test_plan_reads_its_recipe_file_with_the_same_checks(tmp_path, capfd):
    """``mm-adapter plan FILE`` goes through the same reader: an alias and a wrongly typed value are refused."""
    for text, needle in [("command: train alpaca\nout: &o x\ndata: *o\n", "anchors and aliases"),
                         ("command: train alpaca\ntrain: {epochs: 2024-01-01}\n", "setting train.epochs")]:
        config = _write(tmp_path, "alpaca-x.yaml", text)
        code, _, err = command(["plan", str(config)], capfd)
        assert_refused(code, err, str(config), needle)


def test_the_shipped_recipes_pass_the_typed_reader():
    """Every recipe of the package is alias-free and typed as its command's config wants."""
    from mm_adapter.jobs.plan import RECIPE_COMMANDS

    recipes = sorted(FOLDER.glob("*.yaml"))
    assert recipes
    for path in recipes:
        data = read_config_file(path)
        cls = RECIPE_COMMANDS[path.name.split("-")[0]][1]
        check_settings(cls, {k: v for k, v in data.items() if k != "command"}, str(path))


def test_list_settings_are_bounded_and_typed_item_by_item():
    """An ablation's value lists: 5,000 layer counts, or a string among them, are refused naming the setting."""
    from mm_adapter.jobs.configs.ablation import AblateConfig

    refuses(MMAdapterError, lambda: check_settings(AblateConfig, {"layers": [8] * 5_000}, "a.yaml"),
            "a.yaml: setting layers", "at most 4096 items")
    refuses(MMAdapterError, lambda: check_settings(AblateConfig, {"layers": [8, "16"]}, "a.yaml"),
            "setting layers", "item 1", "expected an integer")
    refuses(MMAdapterError, lambda: check_settings(AblateConfig, {"gate_inits": ["zero", "ones"]}, "a.yaml"),
            "setting gate_inits", "'ones'")


def test_good_values_pass_exactly():
    """The checks refuse only what is wrong: ints where floats are meant, nulls where None is allowed, lists."""
    check_settings(TrainAlpacaConfig, {"out": "o", "data": "d", "limit": None, "train": {"base_lr": 1, "lr": None}},
                   "x.yaml")
