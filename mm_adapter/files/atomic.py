"""Atomic writes: readers see the old content or the whole new content, never a torn file or folder.

Every writer in the project goes through :func:`atomic_path` (one file) or :func:`atomic_dir` (a
whole folder): the content is written under a hidden temporary name in the target's own folder
(same file system, so ``os.replace`` is an atomic rename), then renamed onto the target.

Unlike ``tempfile.mkstemp`` (mode 0600) and ``mkdtemp`` (0700), what lands at the target gets the
permissions a plain ``open()`` / ``mkdir`` would give under the user's umask (``0666 & ~umask`` for
files, ``0777 & ~umask`` for folders), so a colleague or a web server can read results as usual.
A rewritten file does not keep the previous target's mode: it gets the umask-based one as well.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import secrets
import shutil
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_dir", "atomic_path", "atomic_write_bytes", "atomic_write_json", "atomic_write_text",
           "current_umask"]

_UMASK_LOCK = threading.Lock()
_NAME_MAX = 255  # bytes in one file name on common Linux/macOS file systems


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows.

    Linux (>= 4.7) reports it in ``/proc/self/status``, which is race-free. Elsewhere the only way is
    ``os.umask(0)`` then restoring it: a file another thread creates in that instant would get mode
    0666/0777. The value is not cached, so a umask changed later in the process is honoured.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0)
        os.umask(mask)
    return mask


def _temp_name(target: Path, tag: str) -> Path:
    """A hidden sibling of ``target``, unique per process and call, that keeps the target's suffix.

    The suffix stays last because some writers derive the format from it (``savefig``) or append
    one when it is missing (``np.save`` adds ``.npy``).
    """
    suffix = target.suffix if len(target.suffix) <= 16 else ""
    tail = f".{os.getpid()}.{secrets.token_hex(4)}.{tag}{suffix}"
    room = _NAME_MAX - len(tail.encode()) - 1
    stem = target.name.encode()[:room].decode(errors="ignore")  # a long target name must not overflow
    return target.with_name(f".{stem}{tail}")


def _fix_modes(path: Path, umask: int) -> None:
    """Give ``path`` (a file, or a folder and everything under it) umask-based permissions.

    Files that have an execute bit keep it (``0777 & ~umask``), like ``cp`` would; symlinks are left alone.
    """
    def fix(entry: Path) -> None:
        info = entry.lstat()
        if stat.S_ISLNK(info.st_mode):
            return
        full = 0o777 if stat.S_ISDIR(info.st_mode) or info.st_mode & 0o111 else 0o666
        os.chmod(entry, full & ~umask)

    fix(path)
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                fix(Path(root, name))


def _remove(path: Path) -> None:
    """Best-effort removal of a temporary file or folder (cleanup must not hide the original error),
    and of ``path + ".<ext>"`` that a suffix-appending writer may have made (the name is unique to us)."""
    for entry in [path, *path.parent.glob(glob.escape(path.name) + ".*")]:
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        except OSError:
            pass


# how each writer words a failed write: Python/libc, safetensors (Rust), torch.save (C++ streams)
_FULL_DISK_WORDS = ("no space left", "storagefull", "code: 28", "disk quota exceeded", "file write failed",
                    "iostream error", "unexpected pos")


def _as_full_disk(error: BaseException, target: Path) -> BaseException:
    """``error`` as ``OSError(ENOSPC, ..., target)`` when it means the disk filled up while writing ``target``.

    Writers in other languages do not raise ``OSError``: safetensors' Rust core raises ``SafetensorError`` with
    "StorageFull ... code: 28", torch.save a ``RuntimeError`` ("file write failed"), and Python's own write names
    only the hidden temporary file, or nothing. The user needs "OUT: no space left on device" whichever wrote.
    """
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return OSError(error.errno, os.strerror(error.errno), str(target))
    if isinstance(error, OSError) or not isinstance(error, Exception):
        return error
    text = " ".join(str(part).lower() for part in (error, error.__cause__, error.__context__) if part is not None)
    if any(word in text for word in _FULL_DISK_WORDS) and (_disk_full(target) or "space" in text or "28" in text):
        full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
        full.__cause__ = error
        return full
    return error


def _disk_full(target: Path) -> bool:
    """Whether the file system of ``target``'s folder has (almost) no room left for an ordinary user."""
    try:
        info = os.statvfs(target.parent)
    except OSError:
        return False
    return info.f_bavail * info.f_frsize < (1 << 20)


def _fsync(path: Path, *, folder: bool = False) -> None:
    """Flush a file's data (or a folder's entries) to disk; skipped where folders cannot be opened (Windows)."""
    try:
        handle = os.open(path, os.O_RDONLY)
    except OSError:
        if folder:
            return
        raise
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


@contextmanager
def atomic_path(path: str | os.PathLike[str], *, fsync: bool = False, fsync_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``.

    The writer creates the file at the yielded path itself (``save_file(t, str(tmp))``,
    ``figure.savefig(tmp)``, ``np.save(tmp, a)``). The temporary name ends with the target's suffix,
    so a target named ``*.npy`` is safe with ``np.save``; for any other suffix ``np.save`` would write
    to ``tmp + ".npy"`` and the commit fails with ``FileNotFoundError``. Missing parent folders are
    created. On an exception the temporary file is removed, the target is left as it was and the
    exception propagates. ``fsync`` flushes the new file to disk before the rename (durable across
    a crash); ``fsync_dir`` also flushes the folder entry after it.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(target, "tmp")
    try:
        yield tmp
        if not os.path.lexists(tmp):
            raise FileNotFoundError(errno.ENOENT, "the writer did not create the temporary file "
                                    f"(a writer that appends a suffix?); {target} is unchanged", str(tmp))
        _fix_modes(tmp, current_umask())
        if fsync:
            _fsync(tmp)
        os.replace(tmp, target)
    except BaseException as error:
        full = _as_full_disk(error, target)  # before the removal frees the space it looks at
        _remove(tmp)
        if full is not error:
            raise full from error
        raise
    if fsync_dir:
        _fsync(target.parent, folder=True)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, fsync_dir: bool = False) -> Path:
    """Atomically replace ``path`` with ``data``, flushed to disk before the rename; returns the path."""
    with atomic_path(path, fsync_dir=fsync_dir) as tmp, open(tmp, "xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8",
                      fsync_dir: bool = False) -> Path:
    """Atomically replace ``path`` with ``text`` (UTF-8 by default, no newline translation)."""
    return atomic_write_bytes(path, text.encode(encoding), fsync_dir=fsync_dir)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, fsync_dir: bool = False, **json_kwargs: Any) -> Path:
    """Atomically replace ``path`` with ``json.dumps(obj, **json_kwargs)`` plus a final newline.

    The whole document is serialised before anything is written, so an unserialisable object
    leaves no trace.
    """
    return atomic_write_text(path, json.dumps(obj, **json_kwargs) + "\n", fsync_dir=fsync_dir)


@contextmanager
def atomic_dir(path: str | os.PathLike[str], *, overwrite: bool = False, fsync_dir: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder next to ``path``; on success it is renamed to ``path``.

    For writers that build a whole folder (checkpoints, a converted model, a PEFT export): other
    processes see no folder or a complete one. The folder and everything inside get umask-based
    permissions. If ``path`` exists, ``FileExistsError`` is raised (before the block runs, and again
    at commit if another process created it meanwhile; an *empty* folder created in that instant is
    replaced, as ``rename`` allows). With ``overwrite=True`` an existing target is replaced, but the
    pair of steps is not atomic: the old one is first renamed aside (readers briefly see no folder,
    never a partial one), the new one renamed in, then the old one removed. On an exception the
    staging folder is removed and the target is left as it was.
    """
    target = Path(path)
    if os.path.lexists(target) and not overwrite:
        raise FileExistsError(errno.EEXIST, "already exists (pass overwrite=True to replace it)", str(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = _temp_name(target, "tmp")
    staging.mkdir()
    try:
        yield staging
        _fix_modes(staging, current_umask())
        _commit_dir(staging, target, overwrite)
    except BaseException as error:
        full = _as_full_disk(error, target)
        _remove(staging)
        if full is not error:
            raise full from error
        raise
    if fsync_dir:
        _fsync(target.parent, folder=True)


def _commit_dir(staging: Path, target: Path, overwrite: bool) -> None:
    """Rename ``staging`` to ``target``, moving an existing target aside first when ``overwrite``."""
    old = _temp_name(target, "old") if overwrite and os.path.lexists(target) else None
    if old is not None:
        os.replace(target, old)
    try:
        os.rename(staging, target)
    except OSError as error:
        if old is not None:
            os.replace(old, target)  # put the previous folder back
        if error.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR) and os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, "appeared while it was being written", str(target)) from error
        raise
    if old is not None:
        _remove(old)
