"""The error boundary of one command: bad input is one line and exit 2, a bug one line and exit 1."""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading
import traceback

from mm_adapter.cli.commands import Command

EXIT_BAD_INPUT, EXIT_BUG, EXIT_INTERRUPTED = 2, 1, 130


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def describe_os_error(error: OSError, out: str | None = None) -> str:
    """An ``OSError`` as "path: reason" (a full disk, a read-only folder, a path whose parent is a file...);
    ``out``: the command's output, named for a full disk that a writer reported without a path."""
    reason = error.strerror or _first_line(error)
    full = error.errno in (errno.ENOSPC, errno.EDQUOT)
    if error.errno == errno.ENOSPC:
        reason = "no space left on device"
    where = error.filename if error.filename is not None else out if full else None
    if where is not None and error.filename2 is not None:
        where = f"{error.filename} -> {error.filename2}"
    return f"{where}: {reason}" if where is not None else reason


def user_errors() -> tuple[type[BaseException], ...]:
    from mm_adapter.errors import MMAdapterError  # the one root: ConfigError, ScienceQAError, ... are its kinds

    return (MMAdapterError,)


class Terminated(KeyboardInterrupt):
    """SIGTERM outside a training loop (which handles it itself): one line and exit 143, like Ctrl-C's 130."""

    exit_code = 128 + signal.SIGTERM


def _terminate(signum: int, frame) -> None:
    raise Terminated("terminated (SIGTERM)")


def run_command(command: Command, argv: list[str], debug: bool = False) -> int:
    """Parse, run the job, print its report; every failure becomes one line on stderr."""
    from mm_adapter.cli.parse import parse, print_help

    if any(arg in ("-h", "--help") for arg in argv):
        print_help(command)
        return 0
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    config = None
    try:
        config = parse(command, argv)
        from mm_adapter.jobs.preflight import check_before_work

        check_before_work(config)  # before the job's module is imported (torch alone takes seconds)
        _quiet_libraries()
        result = command.job_function()(config)
        if command.report:
            from mm_adapter.cli import reports

            getattr(reports, command.report)(result)
        sys.stdout.flush()
        return 0
    except KeyboardInterrupt as error:  # Ctrl-C or SIGTERM; a training run stopped so says where its checkpoint is
        _say(str(error) or "interrupted")
        return getattr(error, "exit_code", EXIT_INTERRUPTED)
    except BrokenPipeError:  # the reader of our stdout went away (e.g. `| head`): not an error of ours
        _detach_stdout()
        return 0
    except user_errors() as error:
        _say(f"error: {' '.join(_first_line(error).split())}")
        return EXIT_BAD_INPUT
    except OSError as error:  # the environment: missing or unreadable files, a full or read-only disk
        if debug:
            traceback.print_exc()
        _say(f"error: {describe_os_error(error, getattr(config, 'out', None))}")
        return EXIT_BAD_INPUT
    except Exception as error:  # noqa: BLE001 - the last line of defence
        if debug:
            traceback.print_exc()
        _say(f"error: internal error in `mm-adapter {command.name}` ({type(error).__name__}: "
             f"{_first_line(error)[:200]}); this is a bug, please report it (rerun with --debug for the traceback)")
        return EXIT_BUG


def _say(line: str) -> None:
    try:
        print(line, file=sys.stderr, flush=True)
    except OSError:
        pass


def _detach_stdout() -> None:
    """After a broken pipe, point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _quiet_libraries() -> None:
    """Weight-loading bars of transformers/hub would drown the command's own output."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    hf_logging = sys.modules.get("transformers.utils.logging")
    if hf_logging is not None:  # imported before main() ran (an in-process caller): it read the variable already
        hf_logging.disable_progress_bar()
