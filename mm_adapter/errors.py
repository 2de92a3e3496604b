"""The one exception root for bad user input (a file, a record, a flag), phrased as one line.

The command line catches :class:`MMAdapterError` and prints its message with exit 2; the subclasses exist where a
caller must tell one kind from another (``except ConfigError`` to name the flag, ``except ScienceQAError`` around
benchmark data). Torch-free: everything imports it.
"""

from __future__ import annotations


class MMAdapterError(ValueError):
    """A problem with something the user gave us (a file, a spec, a flag), phrased as one line."""


class ConfigError(MMAdapterError):
    """A config value out of range; ``field`` is the dataclass field (the flag is ``--field-name``)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.reason = field, message


class ScienceQAError(MMAdapterError):
    """Malformed ScienceQA data, predictions or reference tables (the benchmark side's inputs)."""


def fail(source: object, message: str, pid: str | None = None, field: str | None = None) -> ScienceQAError:
    """A one-line ScienceQA error "source: pid P: field 'F': message" (callers ``raise fail(...)``), so messages
    name the file, the problem and the field instead of relying on a traceback."""
    parts = [str(source)]
    if pid is not None:
        parts.append(f"pid {pid}")
    if field is not None:
        parts.append(f"field {field!r}")
    parts.append(" ".join(message.split()))
    return ScienceQAError(": ".join(parts))
