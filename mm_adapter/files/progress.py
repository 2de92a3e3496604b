"""Progress reporting that suits both a terminal and a log file.

On a terminal a normal tqdm bar is drawn. Anywhere else (a log file, CI, a pipe) carriage-return
redraws would pile up into one huge line, so short plain lines are printed instead: one each time
another 10% of the total is done, plus a final line on ``close()``, e.g.::

    train: 30% 150/500 [00:42<01:38, 3.55it/s, loss=1.234]

With an unknown total (``total=None``) a line is printed at most every 30 seconds (the first
after 30 s), plus the final line. The text comes from ``tqdm.format_meter``, so rates and ETAs
match the bar.

The choice is automatic (``stream.isatty()``) unless the environment variable
``MM_ADAPTER_PROGRESS`` says otherwise: ``bar`` (always a tqdm bar), ``lines`` (always plain
lines), ``none`` (no output), ``auto`` or empty (the default). ``enabled=False`` (e.g. on
non-zero ranks) always wins: nothing is printed.
"""

from __future__ import annotations

import os
import sys
import time
from numbers import Number
from types import TracebackType
from typing import Any, Protocol, Self, TextIO

__all__ = ["ENV_VAR", "LINE_INTERVAL_S", "LineProgress", "Progress", "progress"]

ENV_VAR = "MM_ADAPTER_PROGRESS"
MODES = ("auto", "bar", "lines", "none")
LINE_INTERVAL_S = 30.0  # unknown total: seconds between lines
_FORMAT = "{desc}: {percentage:.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
_clock = time.monotonic  # module attribute so tests can drive time


class Progress(Protocol):
    """What callers may use: the subset of tqdm's interface shared by every mode."""

    def update(self, n: int = 1) -> Any: ...
    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None: ...
    def close(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(self, *exc: object) -> Any: ...


class LineProgress:
    """tqdm-like counter that prints occasional whole lines (no ``\\r``); silent when ``stream`` is None."""

    def __init__(self, total: int | None, desc: str = "", *, initial: int = 0, unit: str = "it",
                 stream: TextIO | None = None):
        self.total, self.desc, self.unit, self.stream = total, desc, unit, stream
        self.n = self.initial = initial
        self.postfix = ""
        self.started = self._last_time = _clock()
        self._last_n = initial
        self._last_decile = self._decile(initial)
        self.closed = False

    def _decile(self, n: int) -> int:
        return n * 10 // self.total if self.total else 0

    def update(self, n: int = 1) -> None:
        """Count ``n`` more items; print a line if a new 10% (or ``LINE_INTERVAL_S``) was reached."""
        self.n += n
        if self.total:
            due = self._decile(self.n) > self._last_decile
        else:
            due = _clock() - self._last_time >= LINE_INTERVAL_S
        if due:
            self._emit()

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
        """Stats shown at the end of the next line, formatted like tqdm's; ``refresh`` is accepted
        for compatibility but never prints (lines appear only at their scheduled points)."""
        from tqdm import tqdm

        items = dict(ordered_dict or {}) | dict(sorted(kwargs.items()))
        self.postfix = ", ".join(f"{key}={tqdm.format_num(value) if isinstance(value, Number) else str(value).strip()}"
                                 for key, value in items.items())

    def line(self) -> str:
        """The current state as one line (also used for the final line)."""
        from tqdm import tqdm

        text = tqdm.format_meter(self.n, self.total, _clock() - self.started, prefix=self.desc, unit=self.unit,
                                 postfix=self.postfix or None, initial=self.initial,
                                 bar_format=_FORMAT if self.total and self.n <= self.total else None)
        return " ".join(text.split())  # tqdm pads rates for a steady bar; a log line needs no padding

    def _emit(self) -> None:
        self._last_time, self._last_n, self._last_decile = _clock(), self.n, self._decile(self.n)
        if self.stream is not None:
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def close(self) -> None:
        """Print the final line unless the last line already showed this count; idempotent."""
        if not self.closed:
            self.closed = True
            if self.n != self._last_n:
                self._emit()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


def _mode(stream: TextIO) -> str:
    """``bar``, ``lines`` or ``none``: the environment variable if set, else whether ``stream`` is a terminal."""
    forced = os.environ.get(ENV_VAR, "").strip().lower() or "auto"
    if forced not in MODES:
        raise ValueError(f"{ENV_VAR}={os.environ[ENV_VAR]!r}: expected one of {', '.join(MODES)}")
    if forced != "auto":
        return forced
    try:
        return "bar" if stream.isatty() else "lines"
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return "lines"


def progress(total: int | None, desc: str = "", *, enabled: bool = True, initial: int = 0, unit: str = "it",
             stream: TextIO | None = None) -> Progress:
    """A progress reporter: a tqdm bar on a terminal, plain 10% lines elsewhere, nothing if disabled.

    ``initial`` is the count already done (a resumed run): rates and lines cover the rest only.
    ``stream`` defaults to ``sys.stderr``.
    """
    stream = sys.stderr if stream is None else stream
    mode = _mode(stream) if enabled else "none"
    if mode == "bar":
        from tqdm import tqdm

        return tqdm(total=total, desc=desc or None, initial=initial, unit=unit, file=stream, dynamic_ncols=True)
    return LineProgress(total, desc, initial=initial, unit=unit, stream=stream if mode == "lines" else None)
