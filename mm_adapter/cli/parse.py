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
import difflib
import inspect
import re
import sys
import typing
from pathlib import Path
from typing import Any, NoReturn

from mm_adapter.cli.commands import Command
from mm_adapter.errors import ConfigError, MMAdapterError
from mm_adapter.fields import flag_name
from mm_adapter.files.config_file import check_settings, read_config_file
from mm_adapter.recipes import find_recipe, recipe_names

CONFIG_FLAGS = ("--config", "--preset")


class UsageError(MMAdapterError):
    """A bad command line: printed as one line, exit code 2."""


def _simple_parsing():
    import simple_parsing

    return simple_parsing


def _parser_class():
    simple_parsing = _simple_parsing()

    class OneLineParser(simple_parsing.ArgumentParser):
        """argparse's ``error`` prints the usage block and exits; ours raises one line, with the nearest flag when
        one was misspelt."""

        def error(self, message: str) -> NoReturn:
            raise UsageError(f"{message}{_did_you_mean(self, message)} (see {self.prog} --help)")

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


def _did_you_mean(parser: argparse.ArgumentParser, message: str) -> str:
    """"; did you mean --limit?" for an unknown flag close to a real one (argparse abbreviations are off: a prefix
    such as --lim is refused, never silently taken for --limit)."""
    if not message.startswith("unrecognized arguments:"):
        return ""
    known = [option for option in parser._option_string_actions if option.startswith("--")]
    for word in message.split(":", 1)[1].split():
        flag = word.split("=", 1)[0]
        if flag.startswith("--"):
            near = difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
            if near:
                return f"; did you mean {near[0]}?"
    return ""


def _config_argument(argv: list[str], command: Command) -> tuple[Path | None, list[str]]:
    """The ``--config``/``--preset`` value (a file, or a recipe name of this command) and argv without it."""
    finder = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
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
    if command.recipes is None:
        raise UsageError(f"--config {known.config}: no such file (`mm-adapter {command.name}` has no recipes)")
    try:
        return find_recipe(known.config, (command.recipes,)), rest
    except MMAdapterError as error:
        if "not a recipe name" in str(error):  # a path that names no file, or a name outside the recipes folder
            raise UsageError(f"--config {known.config[:80]}: no such file, and not a recipe name (letters, digits, "
                             "'_', '.', '-')") from None
        raise UsageError(f"--config {known.config}: no such file or recipe of `mm-adapter {command.name}` "
                         f"({str(error).partition('(')[2]}") from None


# The heading of a nested config's flags in --help (a class name means nothing to a user).
HEADINGS = {"ScienceQASource": "data", "ModelOptions": "base model", "TuningConfig": "method",
            "AdapterConfig": "adapter (--method llama-adapter)", "TrainConfig": "training",
            "VisualConfig": "images (--images)", "AudioConfig": "audio (--audio)", "EvalConfig": "answering",
            "SamplingConfig": "sampling"}
# What a text flag holds, by field name (other text flags show their name, upper-case; numbers N or X).
METAVARS = {"out": "DIR", "runs": "DIR", "data": "PATH", "adapter": "PATH", "problems": "PATH", "base": "MODEL",
            "reference": "FILE", "json": "FILE", "markdown": "FILE", "csv": "FILE", "plot": "FILE", "cost_plot": "FILE",
            "image": "FILE", "hf": "NAME|PATH", "repo": "ORG/NAME", "instruction": "TEXT", "input": "TEXT",
            "question": "TEXT", "context": "TEXT", "title": "TEXT", "use": "NAME", "name": "NAME",
            "mcnemar_against": "NAME", "clip_model": "NAME", "lora_targets": "NAMES"}
MAIN_HEADING = "main flags"
TYPE_METAVARS = re.compile(r"(\[?(int|float|str|list|tuple)\]?\s*)+")  # simple_parsing's metavars, replaced by ours


def _field_hints(cls: type, dest: str = "job") -> dict[str, tuple[str, Any]]:
    """``action.dest`` -> (field name, type hint) for every leaf field of ``cls`` (nested configs walked)."""
    hints, found = typing.get_type_hints(cls), {}
    for item in dataclasses.fields(cls):
        hint = hints[item.name]
        if dataclasses.is_dataclass(hint):
            found |= _field_hints(hint, f"{dest}.{item.name}")
        else:
            found[f"{dest}.{item.name}"] = (item.name, hint)
    return found


def _scalar(hint: Any) -> Any:
    """``int`` of ``int | None``, ``list[int]``, ``tuple[float, float]``; the hint itself otherwise."""
    args = [arg for arg in typing.get_args(hint) if arg is not type(None) and arg is not Ellipsis]
    if args and (typing.get_origin(hint) in (list, tuple) or len(args) == 1):
        return _scalar(args[0])
    return hint


def _metavar(name: str, hint: Any) -> str | None:
    kind = _scalar(hint)
    if kind is int:
        return "N"
    if kind is float:
        return "X"
    if kind is str:
        return METAVARS.get(name, name.upper())
    return None


def _case_insensitive(choices: list, parse: Any) -> Any:
    """A ``type`` that takes a choice in any case (``--format qcm-t`` is QCM-T) and then parses as before."""
    spelled = {choice.lower(): choice for choice in choices}

    def canonical(value: str) -> Any:
        if isinstance(value, str) and value not in choices:
            value = spelled.get(value.lower(), value)
        return parse(value) if callable(parse) else value

    return canonical


def _polish(parser: argparse.ArgumentParser) -> None:
    """Make simple_parsing's flags read like a tool's: help strings escaped for argparse's %-formatting ("95%");
    bools spelled ``--x``/``--no-x`` (simple_parsing says ``--nox``) and shown without a value; a PATH/DIR/FILE/N
    metavar instead of a type name; an optional number that takes exactly one value; choices in any case;
    headings that say what the flags are about, the command's main flags first. A positional argument that a
    config file gives becomes optional. Flags of one length are listed the field's own name first, the same in every
    process (simple_parsing builds them from a set)."""
    given = getattr(parser, "given_by_file", set())
    fields = _field_hints(parser.config_class) if hasattr(parser, "config_class") else {}
    for action in parser._actions:
        primary = "--" + action.dest.rsplit(".", 1)[-1].replace("_", "-")  # simple_parsing orders by length only,
        action.option_strings = sorted(action.option_strings, key=lambda o: (len(o), o != primary, o))  # from a set
        if not action.option_strings and action.dest.removeprefix("job.") in given:
            action.nargs, action.required = ("*" if action.nargs in ("+", "*") else "?"), False
        if action.help:
            action.help = re.sub(r"%(?!\()", "%%", action.help)
        name, hint = fields.get(action.dest, (None, None))
        if action.choices and all(isinstance(choice, str) for choice in action.choices):
            action.type = _case_insensitive(list(action.choices), action.type)
        negatives = getattr(action, "negative_option_strings", None)
        if not negatives:
            if (name is not None and (action.metavar is None or TYPE_METAVARS.fullmatch(str(action.metavar)))
                    and not action.choices):
                action.metavar = _metavar(name, hint)
            if action.option_strings and action.nargs == "?" and hint is not bool:
                action.nargs = None  # simple_parsing lets `--limit` go without its number (and mean None)
            continue
        renamed = ["--no-" + option[len("--no"):] if option.startswith("--no") else option for option in negatives]
        for old, new in zip(negatives, renamed):
            parser._option_string_actions.pop(old, None)
            parser._option_string_actions[new] = action
        action.option_strings = [o for o in action.option_strings if o not in negatives] + renamed
        action.negative_option_strings = renamed
    _group(parser)


def _group(parser: argparse.ArgumentParser) -> None:
    """Headings named for what the flags are about (not ``TrainConfig ['job.train']``), the main flags first, and
    a short usage line (the required flags, then ``[flags]``)."""
    own = getattr(parser, "config_class", None)
    classes = {cls.__qualname__: cls for cls in _config_classes(own)}
    for group in parser._action_groups:
        match = re.match(r"([\w.]+) \[", group.title or "")
        if match is None:
            continue
        if classes.get(match.group(1)) is own:
            group.title, group.description = f"more {parser.prog.removeprefix('mm-adapter ')} flags", None
        else:
            group.title = HEADINGS.get(match.group(1), match.group(1).removesuffix("Config").lower())
    main = parser.add_argument_group(MAIN_HEADING)
    parser._action_groups.remove(main)
    by_name: dict[str, tuple[Any, argparse.Action]] = {}
    for group in parser._action_groups:
        for action in group._group_actions:
            by_name.setdefault(action.dest.rsplit(".", 1)[-1], (group, action))
    for name in getattr(parser, "main_flags", ()):
        if name in by_name:
            group, action = by_name[name]
            group._group_actions.remove(action)
            main._group_actions.append(action)
    if main._group_actions:
        parser._action_groups.insert(0, main)
    parser._action_groups.append(parser._action_groups.pop(parser._action_groups.index(parser._optionals)))  # -h last
    required = [a for a in parser._actions if a.required or (not a.option_strings and a.nargs not in ("?", "*"))]
    formatter = parser._get_formatter()
    words = [" ".join([*a.option_strings[:1], formatter._format_args(a, a.dest.upper())]) for a in required]
    parser.usage = " ".join(["%(prog)s", *[word.replace("%", "%%") for word in words], "[flags]"])


def _config_classes(cls: Any) -> list[type]:
    """``cls`` and every config class nested in it."""
    if not dataclasses.is_dataclass(cls):
        return []
    hints = typing.get_type_hints(cls)
    return [cls, *[nested for item in dataclasses.fields(cls) if dataclasses.is_dataclass(hints[item.name])
                   for nested in _config_classes(hints[item.name])]]


def _formatter_class() -> type:
    """simple_parsing's formatter, showing a bool as it is typed (``--bf16/--no-bf16``, no value) and no default
    for a required flag."""
    base = _simple_parsing().SimpleHelpFormatter

    class Formatter(base):
        def _format_args(self, action: argparse.Action, default_metavar: str) -> str:
            if action.metavar is not None:  # argparse's own: `--choices CHOICE [CHOICE ...]`, as nargs says
                return argparse.HelpFormatter._format_args(self, action, default_metavar)
            return super()._format_args(action, default_metavar)

        def _format_action_invocation(self, action: argparse.Action) -> str:
            if getattr(action, "negative_option_strings", None):
                return "/".join(action.option_strings)
            return super()._format_action_invocation(action)

        def _get_help_string(self, action: argparse.Action) -> str:
            if action.required:
                return action.help or ""
            return super()._get_help_string(action)

    return Formatter


def build_parser(command: Command, defaults: dict[str, Any] | None = None) -> argparse.ArgumentParser:
    simple_parsing = _simple_parsing()
    cls = command.config_class()
    parser = _parser_class()(prog=f"mm-adapter {command.name}", description=inspect.cleandoc(cls.__doc__ or ""),
                             add_option_string_dash_variants=simple_parsing.DashVariant.DASH,
                             nested_mode=simple_parsing.NestedMode.WITHOUT_ROOT, allow_abbrev=False,
                             formatter_class=_formatter_class())
    parser.config_class, parser.main_flags = cls, command.main_flags
    recipes = f" or a recipe name ({', '.join(recipe_names(command.recipes))})" if command.recipes else ""
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
