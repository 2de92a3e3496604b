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

# The hub's own grammar (huggingface_hub's validate_repo_id): parts of at most 96 word characters, '.' and '-',
# starting with a letter or digit, never ".." or "--", not ending in '.'. An id becomes a folder of the hub cache
# (models--org--name), so "org/.." must never be one.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9_][\w.-]{0,95}$")
# A branch, tag or commit (refs/pr/1 included): it becomes refs/<revision> or snapshots/<revision> in the cache.
_REVISION = re.compile(r"^[A-Za-z0-9_][\w.-]{0,99}(?:/[A-Za-z0-9_][\w.-]{0,99}){0,4}$")


def is_repo_id(text: str) -> bool:
    """``org/name`` exactly (what a repository is created and pushed as)."""
    return bool(_HUB_ID.match(text)) and ".." not in text and "--" not in text and not text.endswith(".")


def check_revision(revision: str, where: str) -> str:
    """``revision`` when it is a branch, tag or commit name that stays a name inside the hub cache; else one line."""
    if not _REVISION.match(revision) or ".." in revision or revision.endswith((".", ".lock")):
        raise MMAdapterError(f"{where}: revision {revision[:80]!r} is not a branch, tag or commit name (letters, "
                             "digits, '_', '.', '-', '/' between parts; no '..')")
    return revision


def _inside_cache(folder: Path, where: str) -> Path:
    """The snapshot folder huggingface_hub returned, refused unless it resolves inside the hub cache."""
    from huggingface_hub import constants

    roots = {Path(os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE).resolve(), Path(constants.HF_HUB_CACHE)
             .resolve(), (Path(os.environ.get("HF_HOME") or constants.HF_HOME) / "hub").resolve()}
    if not any(folder.resolve().is_relative_to(root) for root in roots):
        root = next(iter(roots))
        raise MMAdapterError(f"{where}: the hub cache answered with {folder}, outside the cache {root}; refused")
    return folder


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
    if not is_repo_id(repo_id):
        raise MMAdapterError(f"{where}: {repo_id[:80]!r} is not a hub id (org/name: letters, digits, '_', '.', '-')")
    if revision is not None:
        check_revision(revision, where)
    reason = "not in the hub cache (HF_HUB_OFFLINE=1)" if offline else "not fetched from the hub"
    with hub_errors(f"{where}: no such adapter file or folder here, and {reason}"):
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns,
                                        local_files_only=offline, cache_dir=os.environ.get("HF_HUB_CACHE") or None))
    return _inside_cache(folder, where)
