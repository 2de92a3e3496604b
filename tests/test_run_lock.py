"""One writer per output folder: a second run into a folder in use is refused at once, in one line naming the
folder and the other run's pid; the lock dies with its holder (a SIGKILLed run leaves no stale lock).

The lock is ``flock`` on ``.mm-adapter.lock`` inside the folder (released by the kernel when the
process ends, however it ends), removed by a holder that finishes. Every job that writes an
output folder takes it: train alpaca/scienceqa, eval scienceqa, table --out, main.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_output_paths import alpaca_data, predictions, scienceqa_data

from mm_adapter import MMAdapterError
from mm_adapter.cli.commands import find
from mm_adapter.cli.parse import parse
from mm_adapter.files.atomic import _temp_name
from mm_adapter.files.output_folder import LOCK_NAME, folder_lock, output_folder
from tiny_text import REPO, command_here, one_thread, tiny_base_folder  # noqa: F401 (autouse fixture)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tiny_base_folder(tmp_path_factory.mktemp("lock") / "base")


def commands(tmp: Path, base: Path, out: Path) -> dict[str, list[str]]:
    """Every command that writes an output folder, pointed at ``out`` with inputs that would work."""
    sqa = ["--data", str(scienceqa_data(tmp / "sqa")), "--base", str(base)]
    layers = ["--adapter-layers", "2"]  # of the tiny base's 4
    return {
        "train alpaca": ["train", "alpaca", "--data", str(alpaca_data(tmp / "a.json")), "--base", str(base),
                         "--out", str(out), *layers],
        "train alpaca --resume": ["train", "alpaca", "--data", str(tmp / "a.json"), "--base", str(base), "--out",
                                  str(out), "--resume", *layers],
        "train scienceqa": ["train", "scienceqa", *sqa, "--out", str(out), *layers],
        "eval scienceqa": ["eval", "scienceqa", *sqa, "--split", "val", "--out", str(out)],
        "table --out": ["table", str(predictions(tmp / "p.json")), "--problems", str(tmp / "sqa"), "--out", str(out)],
        "main": ["main", "--no-hub", "--out", str(out)],
    }


COMMANDS = ["train alpaca", "train alpaca --resume", "train scienceqa", "eval scienceqa", "table --out", "main"]


def refusal(out: Path, pid: int) -> str:
    return (f"error: {out}: another run (pid {pid}) is writing into this folder; wait for it to finish or choose "
            "another output folder\n")


def tree(folder: Path) -> dict[str, bytes | None]:
    return {str(p): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("name", COMMANDS)
def test_a_second_writer_is_refused_in_one_line_naming_the_holder(base, tmp_path, capsys, name):
    """While a run holds the folder, each command into it exits 2 with one line naming the folder and the holder's
    pid, and its job function raises the same line; nothing in the folder changes."""
    out = tmp_path / "run"
    argv = commands(tmp_path, base, out)[name]
    out.mkdir()
    with folder_lock(out):
        before = tree(tmp_path)
        code, _, err = command_here(argv, capsys)
        assert (code, err) == (2, refusal(out, os.getpid()))
        command = find(argv)[0]
        with pytest.raises(MMAdapterError, match="another run"):
            command.job_function()(parse(command, argv[len(command.words):]))
        assert tree(tmp_path) == before


def test_the_lock_goes_with_its_holder_however_it_ends(tmp_path):
    """A holder that finishes, or fails, releases the lock and removes its file; a folder created for a run that
    failed before writing is removed as before (the lock file does not keep it)."""
    with folder_lock(tmp_path):
        assert (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    assert not (tmp_path / LOCK_NAME).exists()
    with pytest.raises(RuntimeError), output_folder(tmp_path / "new"):
        raise RuntimeError("failed before writing")
    assert list(tmp_path.iterdir()) == []
    with folder_lock(tmp_path):
        pass


def test_a_lock_file_replaced_while_locking_is_not_trusted(tmp_path, monkeypatch):
    """A holder removes the lock file as it finishes; a newcomer that opened the old file just before must not
    believe it holds the folder: it sees the file was replaced and locks the current one."""
    path, flock = tmp_path / LOCK_NAME, fcntl.flock
    replaced = []

    def flock_after_a_holder_finished(handle, operation):
        if not replaced:  # between our open and our flock, a holder finished and another run created the file
            path.unlink()
            path.write_text("")
            replaced.append(os.stat(path).st_ino)
        return flock(handle, operation)

    monkeypatch.setattr(fcntl, "flock", flock_after_a_holder_finished)
    with folder_lock(tmp_path):
        assert os.stat(path).st_ino == replaced[0]
        with pytest.raises(MMAdapterError, match="another run"), folder_lock(tmp_path):
            pass


# Another run's side of the protocol (what folder_lock does), without importing the package: starts in ~50 ms.
HOLD = """
import fcntl, os, sys, time
handle = os.open(os.path.join(sys.argv[1], ".mm-adapter.lock"), os.O_RDWR | os.O_CREAT, 0o666)
fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
os.write(handle, f"{os.getpid()}\\n".encode())
print("held", flush=True)
time.sleep(120)
"""


def test_a_killed_holder_leaves_no_stale_lock(base, tmp_path, capsys):
    """A real process holds the folder: ``python -m mm_adapter table --out`` into it is refused in one line naming
    that process' pid, no traceback; after the holder is SIGKILLed (its lock file left behind), the run proceeds."""
    out = tmp_path / "run"
    out.mkdir()
    argv = commands(tmp_path, base, out)["table --out"]
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline() == "held\n"
        done = subprocess.run([sys.executable, "-m", "mm_adapter", *argv], capture_output=True, text=True,
                              cwd=REPO, timeout=120, check=False)
        assert (done.returncode, done.stdout, done.stderr) == (2, "", refusal(out, holder.pid))
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert (out / LOCK_NAME).exists()
    assert command_here(argv, capsys)[0] == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "table.csv", "table.json", "table.md", "table.png"]


def test_temporary_files_have_per_process_names(tmp_path):
    """Two processes writing the same target never share a temporary file: its name carries the pid and a random
    part (atomic.py), and the lock makes sure they never write into one folder at once."""
    target = tmp_path / "adapter.safetensors"
    first, second = _temp_name(target, "tmp"), _temp_name(target, "tmp")
    assert first != second and f".{os.getpid()}." in first.name and first.name.endswith(".safetensors")
