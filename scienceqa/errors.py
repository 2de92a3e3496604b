"""One exception type for every bad-input case on the benchmark side.

A CLI catches exactly this and prints its one-line message, so messages name the file,
the pid and the field instead of relying on a traceback.
"""

from __future__ import annotations


class ScienceQAError(ValueError):
    """Malformed ScienceQA data, predictions or reference tables."""


def fail(source: object, message: str, pid: str | None = None, field: str | None = None) -> ScienceQAError:
    """Build a one-line error "source: pid P: field 'F': message" (callers `raise fail(...)`)."""
    parts = [str(source)]
    if pid is not None:
        parts.append(f"pid {pid}")
    if field is not None:
        parts.append(f"field {field!r}")
    parts.append(" ".join(message.split()))
    return ScienceQAError(": ".join(parts))
