"""Shared plumbing for the command-line entry points: bad input is one line on stderr, exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Callable

from mm_adapter.errors import MMAdapterError
from scienceqa.errors import ScienceQAError

USER_ERRORS = (MMAdapterError, ScienceQAError, FileNotFoundError, PermissionError, IsADirectoryError)


def run(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Call ``main(argv)``; turn user errors into ``error: ...`` and exit 2, never a traceback."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # weight-loading bars drown the script's own output
    try:
        code = main(argv)
    except USER_ERRORS as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if isinstance(error, OSError) and error.filename:
            message = f"{error.filename}: {error.strerror}"
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
