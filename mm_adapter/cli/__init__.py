"""The ``mm-adapter`` command (also ``python -m mm_adapter``): parse, call the job, print; nothing else.

Every job is a library function (``mm_adapter.jobs``) taking a config dataclass; this module
only turns argv into that config (``parse.py``), calls the function, prints its result
(``reports.py``) and turns every error into one line on stderr with exit code 2 (bad input) or
1 (a bug: the line says so; ``--debug`` or ``MM_ADAPTER_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Sequence

from mm_adapter.cli.boundary import EXIT_BAD_INPUT
from mm_adapter.cli.commands import COMMANDS, find

USAGE = "usage: mm-adapter [--debug] COMMAND [flags]   (mm-adapter COMMAND --help for its flags)"
DEBUG_ENV = "MM_ADAPTER_DEBUG"


def top_help() -> str:
    width = max(len(c.name) for c in COMMANDS)
    lines = [USAGE, "", "LLaMA-Adapter on frozen LLaMA-family models, and the ScienceQA benchmark.", "", "commands:"]
    lines += [f"  {c.name:<{width}}  {c.summary}" for c in COMMANDS]
    lines += ["", "Every command takes --config FILE (YAML/JSON; flags override it) and writes what it ran with",
              "into its output folder as config.yaml, so --config that file reproduces the run."]
    return "\n".join(lines) + "\n"


def _say_error(message: str) -> None:
    text = " ".join(str(message).split()) or "unknown error"
    try:
        print(f"error: {text}", file=sys.stderr, flush=True)
    except (BrokenPipeError, OSError):
        pass


def _encodable(arg: str) -> bool:
    """Bytes that are not UTF-8 reach ``sys.argv`` as lone surrogates, which fail later, deep in a tokenizer."""
    try:
        arg.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _unknown_command(args: list[str]) -> str:
    """The one line for argv that names no command: the nearest command when it is a misspelling."""
    names = [c.name for c in COMMANDS]
    starting = [c.name for c in COMMANDS if c.words[0] == args[0] and len(c.words) > 1]
    if starting and len(args) == 1:
        return f"`{args[0]}` needs a second word: {', '.join(starting)} (see mm-adapter --help)"
    near = next((found[0] for given in (" ".join(args[:2]), args[0])
                 if (found := difflib.get_close_matches(given, names, n=1, cutoff=0.6))), None)
    hint = f" (did you mean '{near}'?)" if near else ""
    return f"unknown command {' '.join(args[:2])!r}{hint}; commands: {', '.join(names)} (see mm-adapter --help)"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (0 ok, 2 bad input, 1 bug, 130/143 stopped by SIGINT/SIGTERM)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get(DEBUG_ENV) == "1"
    if args[:1] == ["--debug"]:
        debug, args = True, args[1:]
    if not args or args[0] in ("-h", "--help"):
        sys.stdout.write(top_help())
        return 0 if args else EXIT_BAD_INPUT
    undecodable = next((arg for arg in args if not _encodable(arg)), None)
    if undecodable is not None:
        shown = undecodable.encode("utf-8", "surrogateescape")[:60]
        _say_error(f"a command-line argument is not valid UTF-8 text: {shown!r}; pass text in UTF-8")
        return EXIT_BAD_INPUT
    command, rest, _ = find(args)
    if command is None:
        _say_error(_unknown_command(args))
        return EXIT_BAD_INPUT
    from mm_adapter.cli.boundary import run_command

    return run_command(command, rest, debug)
