"""The ``mm-adapter`` command (also ``python -m mm_adapter``): parse, call the job, print; nothing else.

Every job is a library function (``mm_adapter.jobs``) taking a config dataclass; this module
only turns argv into that config (``parse.py``), calls the function, prints its result
(``reports.py``) and turns every error into one line on stderr with exit code 2 (bad input) or
1 (a bug: the line says so; ``--debug`` or ``MM_ADAPTER_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import codecs
import difflib
import os
import sys
import threading
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


def _argument_bytes(arg: str) -> bytes:
    """The bytes the user gave for an argument (Python decoded them with the locale's encoding)."""
    try:
        return os.fsencode(arg)
    except UnicodeEncodeError:  # an in-process caller's lone surrogate: no bytes behind it
        return arg.encode("utf-8", "surrogatepass")


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _restart_in_utf8_mode(args: list[str]) -> None:
    """Under a C/POSIX locale without Python's UTF-8 mode (``PYTHONUTF8=0``), argv, file names and stdio are ASCII:
    valid UTF-8 such as "café" arrives as lone surrogates and could be neither printed nor opened. The user's bytes
    were meant as UTF-8 (every file we write is), so the command restarts itself in UTF-8 mode with the same bytes;
    arguments that are not UTF-8 at all are refused below."""
    ascii_locale = codecs.lookup(sys.getfilesystemencoding()).name == "ascii"
    if sys.flags.utf8_mode or not ascii_locale or os.environ.get("PYTHONUTF8") == "1":
        return
    raw = [_argument_bytes(arg) for arg in args]
    if any(not data.isascii() for data in raw) and all(_is_utf8(data) for data in raw):
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, "-X", "utf8", "-m", "mm_adapter", *raw],
                  {**os.environ, "PYTHONUTF8": "1"})


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
    if argv is None:
        _restart_in_utf8_mode(args)
    debug = os.environ.get(DEBUG_ENV) == "1"
    if args[:1] == ["--debug"]:
        debug, args = True, args[1:]
    if not args or args[0] in ("-h", "--help"):
        sys.stdout.write(top_help())
        return 0 if args else EXIT_BAD_INPUT
    undecodable = next((data for data in map(_argument_bytes, args) if not _is_utf8(data)), None)
    if undecodable is not None:
        _say_error(f"a command-line argument is not valid UTF-8 text: {undecodable[:60]!r}; pass text in UTF-8")
        return EXIT_BAD_INPUT
    command, rest, _ = find(args)
    if command is None:
        _say_error(_unknown_command(args))
        return EXIT_BAD_INPUT
    from mm_adapter.cli.boundary import run_command
    from mm_adapter.cli.environment import check_environment
    from mm_adapter.errors import MMAdapterError

    try:
        check_environment()
    except MMAdapterError as error:
        _say_error(str(error))
        return EXIT_BAD_INPUT
    code = run_command(command, rest, debug)
    if argv is None:  # the process's own entry (console script, python -m), never an in-process caller
        _leave_if_threads_remain(code)
    return code


def _leave_if_threads_remain(code: int) -> None:
    """Exit now, without the interpreter's shutdown, when daemon threads are still alive (a demo server's handler
    abandoned mid-prediction, a library's worker): a daemon thread inside a write or a computation while the
    interpreter finalises aborts the process (SIGABRT) instead of giving ``code``. Output is flushed first."""
    if not any(t.daemon and t.is_alive() for t in threading.enumerate() if t is not threading.current_thread()):
        return
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
