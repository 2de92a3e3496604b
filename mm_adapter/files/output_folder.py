"""A job's output folder, its lock, the check that no output is an input, and the config it writes (torch-free).

A job's output folder is created when the job starts writing and removed again if the job fails
before anything was written into it, so a refused run leaves no new folder behind. While a job
runs it holds an exclusive lock on the folder (``flock`` on ``.mm-adapter.lock`` inside it), so a
second run into the same folder is refused at once, naming the first one's pid; the kernel drops
the lock when the process dies, so a killed run never leaves a stale lock. Before writing anything
a job compares every path it writes with every path it reads (:func:`check_no_overlap`). The
config the job ran with is written into the folder as ``config.yaml`` (with the command that ran
it); ``mm-adapter <command> --config that/config.yaml`` reproduces the run.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mm_adapter.errors import MMAdapterError
from mm_adapter.files.atomic import atomic_write_text

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not locked there
    fcntl = None

CONFIG_NAME = "config.yaml"
LOCK_NAME = ".mm-adapter.lock"
PathLike = str | os.PathLike


@dataclass(frozen=True)
class Output:
    """One path a job writes: a file it (re)writes, or a folder it owns as a whole (creates, prunes, replaces)."""

    flag: str  # the flag that chose the path, e.g. "--out"
    path: Path
    folder: bool = False


def outputs_in(flag: str, folder: PathLike, files: Iterable[str], folders: Iterable[str] = ()) -> list[Output]:
    """The files and owned sub-folders a job writes inside ``folder`` (named by ``flag``), its lock file included."""
    base = Path(folder)
    return ([Output(flag, base / name) for name in (*files, LOCK_NAME)]
            + [Output(flag, base / name, folder=True) for name in folders])


def _same(a: Path, b: Path) -> bool:
    """One file or folder under two names: the same resolved path, or the same inode (hard links, bind mounts)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _inside(path: Path, folder: Path) -> bool:
    """``path`` is ``folder`` or lies somewhere below it."""
    return any(_same(parent, folder) for parent in (path.resolve(), *path.resolve().parents))


def _read_paths(given: PathLike | Iterable[PathLike] | None) -> list[Path]:
    """Existing input paths; a folder stands for itself and the files directly inside it (what loaders read)."""
    if given is None:
        return []
    paths = [Path(given)] if isinstance(given, (str, os.PathLike)) else [Path(p) for p in given]
    found = []
    for path in (p for p in paths if p.exists()):
        found.append(path)
        if path.is_dir():
            found += sorted(child for child in path.iterdir() if child.is_file())
    return found


def _clash(path: Path, output: Output) -> str | None:
    """How writing ``output`` would destroy the input ``path``, or None."""
    if output.folder:
        if not _inside(path, output.path):
            return None
        where = "it is" if _same(path, output.path) else "it lies inside"
        return f"{where} {output.path}, which {output.flag} replaces; refusing to delete it"
    if not _same(path, output.path):
        return None
    how = "" if path.resolve() == output.path.resolve() else " (the same file under another name)"
    return f"{output.flag} writes {output.path}{how}; refusing to overwrite it"


def check_no_overlap(outputs: Iterable[Output], inputs: Mapping[str, PathLike | Iterable[PathLike] | None]) -> None:
    """Refuse, before anything is written, a job that would overwrite or delete one of its own inputs.

    ``inputs`` maps each input flag to a path (or several, or None); only existing paths count, and
    a folder also stands for the files directly inside it. An input clashes with an output file that
    is the same file (resolved, or the same inode through a hard link) and with an owned output
    folder it lies inside. The one-line error names the input flag, the path and the output's flag.
    """
    outputs = list(outputs)
    for flag, given in inputs.items():
        for path in _read_paths(given):
            for output in outputs:
                reason = _clash(path, output)
                if reason is not None:
                    raise MMAdapterError(f"{flag} {path} is one of the inputs, but {reason} "
                                         f"(choose another {output.flag})")


def _lock_holder(handle: int) -> str:
    """The pid the holder wrote into the lock file, in words (it may not have written it yet)."""
    try:
        text = os.pread(handle, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    return f"pid {text}" if text.isdigit() else "pid unknown"


def _acquire(path: Path) -> int:
    """An open, exclusively locked handle on ``path``, or a one-line refusal naming the holder."""
    while True:
        handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(handle)
            os.close(handle)
            raise MMAdapterError(f"{path.parent}: another run ({holder}) is writing into this folder; wait for "
                                 "it to finish or choose another output folder") from None
        try:
            if os.stat(path).st_ino == os.fstat(handle).st_ino:
                return handle
        except FileNotFoundError:
            pass
        os.close(handle)  # the holder removed the file as it finished: lock the new one


@contextmanager
def folder_lock(folder: PathLike) -> Iterator[Path]:
    """Hold the folder's lock for the enclosed work: one writer per output folder.

    A second holder is refused at once (it does not wait). The lock file is removed at the end
    while still locked, so a process that opened it meanwhile sees a replaced file and retries.
    """
    path = Path(folder) / LOCK_NAME
    if fcntl is None:
        yield path
        return
    handle = _acquire(path)
    try:
        os.ftruncate(handle, 0)
        os.write(handle, f"{os.getpid()}\n".encode())
        yield path
    finally:
        path.unlink(missing_ok=True)
        os.close(handle)


def _missing_parents(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    for path in (folder, *folder.parents):
        if path.exists():
            break
        missing.append(path)
    return missing


@contextmanager
def output_folder(folder: PathLike, lock: bool = True) -> Iterator[Path]:
    """Create ``folder`` (and parents) and hold its lock (``lock``: off on the ranks > 0 of a torchrun job)
    for the enclosed work; if that work fails before writing anything into it, remove what was created,
    so a refused run leaves no new empty folder behind."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise MMAdapterError(f"{folder}: output path exists and is not a folder")
    created = _missing_parents(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with folder_lock(folder) if lock else nullcontext(folder):
            yield folder
    except BaseException:
        for path in created:  # deepest first; stops at the first one something was written into
            try:
                path.rmdir()
            except OSError:
                break
        raise


def config_dict(config: Any) -> dict[str, Any]:
    """A job config as plain YAML-able data (tuples become lists)."""

    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        return value

    return plain(dataclasses.asdict(config))


def write_config(folder: str | Path, command: str, config: Any) -> Path:
    """``folder/config.yaml``: the command and every setting it ran with (``--config`` reads it back)."""
    import yaml

    text = f"# mm-adapter {command} --config {Path(folder) / CONFIG_NAME} reproduces this run\n"
    text += yaml.safe_dump({"command": command, **config_dict(config)}, sort_keys=False)
    return atomic_write_text(Path(folder) / CONFIG_NAME, text)
