"""mm_adapter.files.atomic: umask-based permissions, all-or-nothing replacement, cleanup on failure."""

import os
import stat
from pathlib import Path

import pytest

from mm_adapter.files.atomic import (
    atomic_dir, atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text, current_umask,
)


@pytest.fixture(params=[(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)], ids=["umask022", "umask077"])
def umask(request):
    """Run the test under a given umask (restored after); yields (umask, file mode, folder mode)."""
    mask, file_mode, dir_mode = request.param
    old = os.umask(mask)
    try:
        yield mask, file_mode, dir_mode
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_current_umask_reads_without_changing(umask):
    """The umask helper reports the process umask and leaves it as it was."""
    assert current_umask() == umask[0]
    assert current_umask() == umask[0]


def test_written_files_get_umask_permissions(tmp_path, umask):
    """Every writer yields the mode open() would give (0666 & ~umask), not mkstemp's 0600."""
    _, file_mode, _ = umask
    written = [atomic_write_text(tmp_path / "a.txt", "hi"), atomic_write_bytes(tmp_path / "b.bin", b"\0"),
               atomic_write_json(tmp_path / "c.json", {"x": 1})]
    with atomic_path(tmp_path / "d.npy") as tmp:
        tmp.write_bytes(b"npy")
    for path in [*written, tmp_path / "d.npy"]:
        assert mode(path) == file_mode, path


def test_atomic_dir_gets_umask_permissions(tmp_path, umask):
    """A staged folder, its subfolders and its files end up 0777/0666 & ~umask (mkdtemp would give 0700)."""
    _, file_mode, dir_mode = umask
    target = tmp_path / "ckpt"
    with atomic_dir(target) as staging:
        (staging / "sub").mkdir(mode=0o700)
        (staging / "sub" / "state.json").write_text("{}")
        os.chmod(staging / "sub" / "state.json", 0o600)
    assert (mode(target), mode(target / "sub"), mode(target / "sub" / "state.json")) == (dir_mode, dir_mode, file_mode)


def test_contents_and_json_round_trip(tmp_path):
    """The helpers write exactly the given content (text as UTF-8, JSON with a final newline)."""
    assert atomic_write_text(tmp_path / "t", "é\n").read_bytes() == "é\n".encode()
    assert atomic_write_json(tmp_path / "j", {"b": 1, "a": [2]}, sort_keys=True).read_text() == \
        '{"a": [2], "b": 1}\n'


def test_failure_keeps_previous_content_and_no_temp(tmp_path):
    """An exception inside the block leaves the old file untouched and no temporary file behind."""
    target = atomic_write_text(tmp_path / "pred.json", "old")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        tmp.write_text("half-writ")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert leftovers(tmp_path) == []


def test_unserialisable_json_leaves_nothing(tmp_path):
    """A JSON error is raised before any file is created: the old content survives, no temp file."""
    target = atomic_write_json(tmp_path / "m.json", [1])
    with pytest.raises(TypeError):
        atomic_write_json(target, {"x": object()})
    assert target.read_text() == "[1]\n" and leftovers(tmp_path) == []


def test_temp_name_same_folder_hidden_unique_keeps_suffix(tmp_path):
    """Temp names are hidden siblings (same file system, so rename is atomic), unique per call and
    end with the target's suffix (savefig picks the format from it; np.save would append .npy)."""
    target = tmp_path / "loss.png"
    names = set()
    for _ in range(3):
        with atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and tmp.name.startswith(".") and tmp.suffix == ".png"
            assert not tmp.exists()
            names.add(tmp.name)
            tmp.write_bytes(b"png")
    assert len(names) == 3 and str(os.getpid()) in names.pop()


def test_writer_that_creates_nothing_is_an_error(tmp_path):
    """If the writer wrote elsewhere (np.save appends .npy to other suffixes) the commit fails loudly,
    the target is unchanged and the stray file is removed."""
    target = atomic_write_text(tmp_path / "x.bin", "old")
    with pytest.raises(FileNotFoundError), atomic_path(target) as tmp:
        tmp.with_name(tmp.name + ".npy").write_bytes(b"npy")  # what np.save(tmp, array) does
    assert target.read_text() == "old" and leftovers(tmp_path) == []


def test_parents_are_created(tmp_path):
    """Missing parent folders are created for files and folders alike."""
    assert atomic_write_text(tmp_path / "a" / "b" / "c.txt", "x").read_text() == "x"
    with atomic_dir(tmp_path / "d" / "e" / "model") as staging:
        (staging / "config.json").write_text("{}")
    assert (tmp_path / "d" / "e" / "model" / "config.json").is_file()


def test_parent_is_a_file_raises_oserror(tmp_path):
    """A target under a regular file is an OSError for the caller, never swallowed."""
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError):
        atomic_write_text(tmp_path / "file" / "out.txt", "x")
    with pytest.raises(OSError), atomic_dir(tmp_path / "file" / "folder"):
        pass


def test_atomic_dir_refuses_existing_without_overwrite(tmp_path):
    """Without overwrite an existing folder is never clobbered, and the error comes before any work."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("k")
    with pytest.raises(FileExistsError), atomic_dir(tmp_path / "out"):
        pytest.fail("block must not run")
    assert (tmp_path / "out" / "keep").read_text() == "k"


def test_atomic_dir_overwrite_replaces_whole_folder(tmp_path):
    """overwrite=True swaps in the new folder: old files are gone, no aside/staging folders remain."""
    target = tmp_path / "peft"
    with atomic_dir(target) as staging:
        (staging / "old.bin").write_text("1")
    with atomic_dir(target, overwrite=True) as staging:
        (staging / "new.bin").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["new.bin"]
    assert leftovers(tmp_path) == []


def test_atomic_dir_failure_removes_staging_keeps_old(tmp_path):
    """An exception while building the folder removes the staging folder and keeps the previous one."""
    target = tmp_path / "step-1"
    with atomic_dir(target) as staging:
        (staging / "state.json").write_text("old")
    with pytest.raises(KeyError), atomic_dir(target, overwrite=True) as staging:
        (staging / "state.json").write_text("new")
        raise KeyError("boom")
    assert (target / "state.json").read_text() == "old"
    assert leftovers(tmp_path) == []
