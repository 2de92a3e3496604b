"""Issue 23, classes 8 and 9: the shared readers and writers give every file of every command the same checks.

JSON (files/text.loads_json, used by the ScienceQA readers, prediction and partial files, metrics, checkpoints'
state, Alpaca lines, config files): nesting too deep, a NaN/Infinity literal, a number out of a double's range and
an escaped lone surrogate are one line naming the file, exit 2, never a RecursionError ("a bug") or a value passed
on. A split listing a problem twice names the problem. A full disk while writing is "OUT: no space left on
device", whichever library wrote (Python, safetensors' Rust core, torch), and the previous file stays as it was:
exercised on a real full file system (a 64 KiB tmpfs mounted in a user namespace). A plain pickle given as a torch
checkpoint is called what it is.
"""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from entry_point import MM_ADAPTER
from test_scienceqa_data import record, write_official
from test_special_files import ENV, assert_refused, command, refuses

from mm_adapter.errors import MMAdapterError
from mm_adapter.files.safe_load import load_torch_file
from mm_adapter.files.text import loads_json, read_json
from mm_adapter.scienceqa.data import read_official
from mm_adapter.scienceqa.predictions import load_predictions
from mm_adapter.scienceqa.report import read_reference

DEEP = "[" * 100_000 + "]" * 100_000
# (document, words of the refusal): each a JSON file a command may be handed
BAD_JSON = {
    "nested too deeply": (DEEP, "nested too deeply"),
    "a NaN literal": ('{"a": NaN}', "NaN and Infinity are not standard JSON"),
    "an Infinity literal": ('{"a": -Infinity}', "NaN and Infinity are not standard JSON"),
    "a number out of range": ('{"a": 1e400}', "out of range of a double"),
    "a lone surrogate": ('{"a": "caf\\udce9"}', "lone surrogate"),
    "a lone surrogate key": ('{"\\ud800": 1}', "lone surrogate"),
}


@pytest.mark.parametrize("case", BAD_JSON)
def test_the_shared_json_parser_refuses_what_json_has_no_place_for(tmp_path, case):
    text, needle = BAD_JSON[case]
    path = tmp_path / "x.json"
    path.write_text(text)
    refuses(MMAdapterError, lambda: read_json(path), str(path), needle)


def test_the_shared_json_parser_keeps_what_is_json():
    """A surrogate *pair* escape is text (an emoji), big integers and ordinary floats pass."""
    assert loads_json('{"a": "\\ud83d\\ude00", "b": 12345678901234567890, "c": -1.5e300}') == {
        "a": "\U0001F600", "b": 12345678901234567890, "c": -1.5e300}


@pytest.mark.parametrize("case", ["nested too deeply", "a NaN literal", "a lone surrogate"])
def test_benchmark_files_get_the_same_checks_through_the_command(tmp_path, capfd, case):
    """``eval scienceqa`` with a problems.json that is too deep (a RecursionError, exit 1, before), holds NaN, or
    a question with a lone surrogate (which reached the tokenizer before): one line naming the file, exit 2."""
    root = write_official(tmp_path / "data", {"1": record(), "2": record()}, {"test": ["1", "2"]})
    text, needle = BAD_JSON[case]
    problems = root / "problems.json"
    if case == "nested too deeply":
        problems.write_text(DEEP)
    elif case == "a NaN literal":
        problems.write_text(problems.read_text().replace('"answer": 0', '"answer": NaN', 1))
    else:
        problems.write_text(problems.read_text().replace("Which is a mammal?", "Which is a mamm\\udce9l?", 1))
    before = problems.read_bytes()
    code, _, err = command(["eval", "scienceqa", "--split", "test", "--data", str(root), "--out",
                            str(tmp_path / "out"), "--base", str(tmp_path / "no-base")], capfd)
    assert_refused(code, err, str(problems), needle, last=True)
    assert problems.read_bytes() == before and not (tmp_path / "out").exists()


def test_table_inputs_get_the_same_checks(tmp_path, capfd):
    """A predictions file nested too deeply and a reference table with NaN, through ``mm-adapter table``."""
    root = write_official(tmp_path / "data", {"1": record()}, {"test": ["1"]})
    deep = tmp_path / "deep.json"
    deep.write_text('{"results": ' + DEEP + "}")
    code, _, err = command(["table", str(deep), "--problems", str(root)], capfd)
    assert_refused(code, err, str(deep), "nested too deeply")
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"results": {"1": 0}}))
    reference = tmp_path / "reference.json"
    reference.write_text('{"LLaMA-Adapter": {"NAT": NaN, "Avg": Infinity}}')
    code, out, err = command(["table", str(good), "--problems", str(root), "--reference", str(reference)], capfd)
    assert_refused(code, err, str(reference), "NaN and Infinity are not standard JSON")
    assert "nan" not in out.lower()
    refuses(MMAdapterError, lambda: read_reference(reference), "NaN")
    refuses(MMAdapterError, lambda: load_predictions(deep), "nested too deeply")


def test_a_split_listing_a_problem_twice_names_the_problem(tmp_path, capfd):
    root = write_official(tmp_path / "data", {"1": record(), "2": record()}, {"test": ["1", "2", "1"]})
    message = refuses(MMAdapterError, lambda: read_official(root, "test"), "pid_splits.json", "'test'",
                      "lists problem 1 twice")
    assert "predictions" not in message
    code, _, err = command(["eval", "scienceqa", "--split", "test", "--data", str(root), "--out",
                            str(tmp_path / "out"), "--base", str(tmp_path / "no-base")], capfd)
    assert_refused(code, err, "pid_splits.json", "lists problem 1 twice", last=True)


def test_a_plain_pickle_given_as_a_checkpoint_says_what_it_is(tmp_path):
    """Not "truncated or corrupt?": a pickle.dump file of tensors is refused as a plain pickle, before unpickling."""
    path = tmp_path / "adapter.pth"
    path.write_bytes(pickle.dumps({"adapter_query.weight": torch.zeros(2, 4)}))
    message = refuses(MMAdapterError, lambda: load_torch_file(path), "adapter.pth", "plain Python pickle",
                      "not a torch checkpoint", "can run code")
    assert "truncated or corrupt" not in message


def test_a_plain_pickle_through_the_command(tmp_path, capfd):
    path = tmp_path / "adapter.pth"
    path.write_bytes(pickle.dumps({"x": torch.zeros(2)}, protocol=4))
    code, _, err = command(["convert", str(path), str(tmp_path / "out.safetensors"), "--from", "official"], capfd)
    assert_refused(code, err, "adapter.pth", "plain Python pickle")
    assert not (tmp_path / "out.safetensors").exists()


# --- a real full disk -----------------------------------------------------------------------------------------

def full_disk(tmp_path: Path, argv: list[str], size: str = "64k") -> subprocess.CompletedProcess:
    """``argv`` run with ``tmp_path/full`` a fresh tmpfs of ``size`` (a user and mount namespace: no root needed)."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) not found")
    mount = tmp_path / "full"
    mount.mkdir()
    script = f'mount -t tmpfs -o size={size} tmpfs "{mount}" || exit 99; exec "$@"'
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, "-", *argv],
                          capture_output=True, text=True, env=ENV, timeout=300)
    if done.returncode == 99 or "unshare failed" in done.stderr:
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {done.stderr.strip()[:200]}")
    return done


def test_a_full_disk_through_the_command_is_out_no_space_left_on_device(tmp_path):
    out = tmp_path / "full" / "set"
    done = full_disk(tmp_path, [MM_ADAPTER, "data", "synthetic-images", "--n-train", "60", "--n-val", "10",
                                "--n-test", "10", str(out)])
    assert (done.returncode, done.stderr) == (2, f"error: {out}: no space left on device\n")


WRITERS = r"""
import sys, os, torch
from pathlib import Path
from safetensors.torch import save_file
from mm_adapter.files.atomic import atomic_path, atomic_write_bytes
folder = Path(sys.argv[1])
old = folder / "adapter.safetensors"
old.write_bytes(b"previous")
big = {"w": torch.ones(64, 1024)}
def through_atomic(name):
    target = {"python": folder / "a.bin", "safetensors": old, "torch": folder / "b.pt"}[name]
    with atomic_path(target) as tmp:
        if name == "python":
            tmp.write_bytes(bytes(300_000))
        elif name == "safetensors":
            save_file(big, str(tmp))
        else:
            torch.save(big, tmp)
for name in ("python", "safetensors", "torch"):
    try:
        through_atomic(name)
        print(name, "written")
    except OSError as error:
        print(name, error.errno, error.filename, error.strerror)
    except Exception as error:
        print(name, "not an OSError:", type(error).__name__)
print("old", old.read_bytes(), sorted(p.name for p in folder.iterdir()))
"""


def test_every_writer_on_a_full_disk_is_enospc_naming_the_target(tmp_path):
    """Python's write, safetensors' Rust writer and torch.save, each inside the atomic writer on a full tmpfs:
    an OSError(ENOSPC) naming the target (what the command prints as "OUT: no space left on device"), the previous
    file byte-identical and no temporary file left behind."""
    done = full_disk(tmp_path, [sys.executable, "-c", WRITERS, str(tmp_path / "full")])
    folder = tmp_path / "full"
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:3] == [f"python 28 {folder / 'a.bin'} No space left on device",
                         f"safetensors 28 {folder / 'adapter.safetensors'} No space left on device",
                         f"torch 28 {folder / 'b.pt'} No space left on device"], done.stdout
    assert lines[3] == "old b'previous' ['adapter.safetensors']", done.stdout
