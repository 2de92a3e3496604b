"""Flags generated from a job's config dataclass, with ``--config FILE`` recipes that flags override.

Why ``simple_parsing``: it is argparse underneath (so subcommands, ``choices`` and our one-line
errors are plain argparse), it turns each field's docstring into the flag's help and shows every
default, it spells flags with dashes (the documented ``--adapter-len`` keeps working), it takes
partial nested defaults (a recipe file), and it imports in ~0.15 s. transformers'
HfArgumentParser imports transformers (1.1-1.3 s here, over the 1.5 s budget of ``--help`` by
itself); jsonargparse has no dash spelling (``--adapter_len``); tyro prints errors as multi-line
boxes with only a private hook to change them.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import typing
from pathlib import Path
from typing import Any, NoReturn

from mm_adapter.cli.commands import Command
from mm_adapter.errors import ConfigError, MMAdapterError
from mm_adapter.fields import flag_name
from mm_adapter.files.config_file import check_settings, read_config_file
from mm_adapter.recipes import recipe_file

CONFIG_FLAGS = ("--config", "--preset")


class UsageError(MMAdapterError):
    """A bad command line: printed as one line, exit code 2."""


def _simple_parsing():
    import simple_parsing

    return simple_parsing


def _parser_class():
    simple_parsing = _simple_parsing()

    class OneLineParser(simple_parsing.ArgumentParser):
        """argparse's ``error`` prints the usage block and exits; ours raises one line."""

        def error(self, message: str) -> NoReturn:
            raise UsageError(f"{message} (see {self.prog} --help)")

        def exit(self, status: int = 0, message: str | None = None) -> NoReturn:  # simple_parsing exits on some
            if message:                                                          # malformed bools itself
                raise UsageError(f"{message.strip()} (see {self.prog} --help)")
            raise SystemExit(status)

        def _preprocessing(self, *args: Any, **kwargs: Any) -> None:  # where simple_parsing adds the flags
            done = self._preprocessing_done
            super()._preprocessing(*args, **kwargs)
            if not done:
                _polish(self)

    return OneLineParser


def _config_argument(argv: list[str], command: Command) -> tuple[Path | None, list[str]]:
    """The ``--config``/``--preset`` value (a file, or a recipe name of this command) and argv without it."""
    finder = argparse.ArgumentParser(add_help=False)
    for flag in CONFIG_FLAGS:
        finder.add_argument(flag, dest="config")
    try:
        known, rest = finder.parse_known_args(argv)
    except SystemExit:
        raise UsageError("--config needs a file or a recipe name") from None
    if known.config is None:
        return None, rest
    path = Path(known.config)
    if path.is_file():
        return path, rest
    found = recipe_file(known.config, command.recipes)
    if found is None:
        raise UsageError(f"--config {known.config}: no such file or recipe of `mm-adapter {command.name}`")
    return found, rest


def _polish(parser: argparse.ArgumentParser) -> None:
    """Help strings are %-formatted by argparse: escape a literal "%" of a docstring ("95% intervals").
    simple_parsing spells a bool's negative ``--nofoo-bar``; make it ``--no-foo-bar`` (documented forms).
    A positional argument that a config file gives becomes optional on the command line."""
    given = getattr(parser, "given_by_file", set())
    for action in parser._actions:
        if not action.option_strings and action.dest.removeprefix("job.") in given:
            action.nargs, action.required = ("*" if action.nargs in ("+", "*") else "?"), False
        if action.help:
            action.help = re.sub(r"%(?!\()", "%%", action.help)
        negatives = getattr(action, "negative_option_strings", None)
        if not negatives:
            continue
        renamed = ["--no-" + option[len("--no"):] if option.startswith("--no") else option for option in negatives]
        for old, new in zip(negatives, renamed):
            parser._option_string_actions.pop(old, None)
            parser._option_string_actions[new] = action
        action.option_strings = [o for o in action.option_strings if o not in negatives] + renamed
        action.negative_option_strings = renamed
        action.metavar = "true|false"


def build_parser(command: Command, defaults: dict[str, Any] | None = None) -> argparse.ArgumentParser:
    simple_parsing = _simple_parsing()
    cls = command.config_class()
    parser = _parser_class()(prog=f"mm-adapter {command.name}", description=cls.__doc__,
                             add_option_string_dash_variants=simple_parsing.DashVariant.DASH,
                             nested_mode=simple_parsing.NestedMode.WITHOUT_ROOT)
    recipes = f" or a recipe name ({command.recipes}-*.yaml in mm_adapter/recipes)" if command.recipes else ""
    parser.add_argument("--config", "--preset", metavar="FILE", help=f"YAML/JSON settings file{recipes}; "
                        "flags given on the command line override it")
    parser.add_arguments(cls, dest="job")
    if defaults:
        parser.set_defaults(job=defaults)
        parser.given_by_file = set(defaults)
    return parser


def _bool_flags(cls: type) -> set[str]:
    """The dashed names of ``cls``'s bool fields (recursively: nested configs' flags are not prefixed)."""
    hints = typing.get_type_hints(cls)
    found: set[str] = set()
    for item in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[item.name]):
            found |= _bool_flags(hints[item.name])
        elif hints[item.name] is bool:
            found.add(item.name.replace("_", "-"))
    return found


def _spell_out_bools(cls: type, argv: list[str]) -> list[str]:
    """A bare ``--flag``/``--no-flag`` becomes ``--flag=true``/``--flag=false``: simple_parsing gives bool flags an
    optional value, so a bare one before a positional (``convert --overwrite IN OUT``) would take IN as its value."""
    from simple_parsing.utils import FALSE_STRINGS, TRUE_STRINGS

    names, spelled = _bool_flags(cls), []
    for i, arg in enumerate(argv):
        if arg == "--":
            return spelled + argv[i:]
        valued = i + 1 < len(argv) and argv[i + 1].strip().lower() in (*TRUE_STRINGS, *FALSE_STRINGS)
        if not valued and arg.startswith("--no-") and arg[5:] in names:
            arg = f"--{arg[5:]}=false"
        elif not valued and arg.startswith("--") and arg[2:] in names:
            arg = f"{arg}=true"
        spelled.append(arg)
    return spelled


def _null_paths(data: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Key paths whose value in a config file is null (``train: {lr: null}`` -> ("train", "lr"))."""
    found = []
    for key, value in data.items():
        if isinstance(value, dict):
            found += _null_paths(value, (*prefix, key))
        elif value is None:
            found.append((*prefix, key))
    return found


def _replaced(config: Any, path: tuple[str, ...], value: Any) -> Any:
    head, *rest = path
    inner = _replaced(getattr(config, head), tuple(rest), value) if rest else value
    return dataclasses.replace(config, **{head: inner})


def _with_file_nulls(config: Any, defaults: dict[str, Any], argv: list[str]) -> Any:
    """A null in a config file means None (``lr: null``: base_lr scaling), not "keep the default": simple_parsing
    reads an unset flag's None as absent and would restore the dataclass default. Flags given still win."""
    for path in _null_paths(defaults):
        flag = flag_name(path[-1])
        if not any(arg == flag or arg.startswith(flag + "=") for arg in argv):
            config = _replaced(config, path, None)
    return config


def parse(command: Command, argv: list[str]) -> Any:
    """The command's config from ``--config`` (if any) and the flags; one-line :class:`UsageError` otherwise."""
    path, rest = _config_argument(argv, command)
    defaults = read_config_file(path) if path else {}
    defaults.pop("command", None)  # written into config.yaml for the reader; not a setting
    check_settings(command.config_class(), defaults, str(path))
    parser = build_parser(command, defaults)
    try:
        config = parser.parse_args(_spell_out_bools(command.config_class(), rest)).job
        return _with_file_nulls(config, defaults, rest)
    except UsageError:
        raise
    except ConfigError as error:
        raise UsageError(f"{flag_name(error.field)}: {error.reason}") from None
    except (TypeError, ValueError) as error:  # a value the dataclass or a field type refused
        raise UsageError(f"{str(error).strip().splitlines()[0]} (see mm-adapter {command.name} --help)") from None
    except SystemExit:  # a parser exit without a message: never a valid parse here (--help is answered earlier)
        raise UsageError(f"cannot parse the flags {' '.join(rest)!r} (see mm-adapter {command.name} --help)") from None


def print_help(command: Command) -> None:
    build_parser(command).print_help(sys.stdout)
