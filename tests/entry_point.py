"""The one front door as a real process: the ``mm-adapter`` console script of the environment running the tests
(what ``pip install`` puts on PATH), for tests that need a fresh interpreter (signals, SIGKILL, exit codes)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

MM_ADAPTER = str(Path(sys.executable).with_name("mm-adapter"))


def default_ctrl_c() -> None:
    """``preexec_fn`` of a child that a test stops with SIGINT: the default disposition, which Python turns into
    KeyboardInterrupt. A suite started in the background (``cmd &`` in a shell without job control, as CI scripts
    and nohup do) ignores SIGINT, children inherit that across exec, and Ctrl-C would never reach them."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
