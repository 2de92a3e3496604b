"""Hub ids and the hub cache: ``org/name[@revision]`` spelled apart from paths, snapshots fetched (or, with
``HF_HUB_OFFLINE=1``, found in the cache), and huggingface_hub's errors as one line."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mm_adapter.errors import MMAdapterError
from mm_adapter.files.safe_load import one_line

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_repo_id(text: str) -> bool:
    """``org/name`` exactly (what a repository is created and pushed as)."""
    return bool(_HUB_ID.match(text))


def is_hub_id(text: str) -> bool:
    """``org/name`` or ``org/name@revision`` that is not spelled as a path or an adapter file."""
    if text.startswith((".", "/", "~")) or text.endswith(".safetensors"):
        return False
    return is_repo_id(text.split("@", 1)[0])


def split_revision(spec: str) -> tuple[str, str | None]:
    """``org/name@rev`` -> (``org/name``, ``rev``); without ``@`` the revision is None (the default branch)."""
    repo_id, _, revision = spec.partition("@")
    return repo_id, revision or None


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` as huggingface_hub reads it, but now (its constants are read once, at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


@contextmanager
def hub_errors(what: str) -> Iterator[None]:
    """What huggingface_hub raises (HTTP, connection, missing cache entries) as one line: ``WHAT (Type: msg)``."""
    import huggingface_hub.utils

    client = getattr(huggingface_hub.utils, "httpx", None)  # the HTTP client it uses: its connection errors
    errors = (OSError, ValueError, *((client.HTTPError,) if client else ()))
    try:
        yield
    except errors as error:
        raise MMAdapterError(f"{what} ({one_line(error)})") from None


def hub_snapshot(repo_id: str, revision: str | None, patterns: list[str]) -> Path:
    """The cached snapshot folder of ``repo_id`` at ``revision`` holding the files ``patterns`` match (downloaded
    if needed; with ``HF_HUB_OFFLINE=1`` only found in the cache)."""
    from huggingface_hub import snapshot_download

    offline = hub_offline()
    where = f"{repo_id}{'@' + revision if revision else ''}"
    reason = "not in the hub cache (HF_HUB_OFFLINE=1)" if offline else "not fetched from the hub"
    with hub_errors(f"{where}: no such adapter file or folder here, and {reason}"):
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns,
                                      local_files_only=offline, cache_dir=os.environ.get("HF_HUB_CACHE") or None))
