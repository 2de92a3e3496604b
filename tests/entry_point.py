"""The one front door as a real process: the ``mm-adapter`` console script of the environment running the tests
(what ``pip install`` puts on PATH), for tests that need a fresh interpreter (signals, SIGKILL, exit codes)."""

from __future__ import annotations

import sys
from pathlib import Path

MM_ADAPTER = str(Path(sys.executable).with_name("mm-adapter"))
