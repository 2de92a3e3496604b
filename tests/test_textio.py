"""One reader for the text and JSON files the model side is handed (issue 12, class 4): whatever is wrong with
such a file (not UTF-8, not JSON, JSON of the wrong kind, missing, a folder, a FIFO, a device, too large) is one
``MMAdapterError`` line naming it, with the line (and column) where that helps, and a FIFO or device is refused
without being opened for reading.

``mm_adapter.files.text`` on its own; then a foreign adapter's ``adapter_config.json`` (the file the issue names)
through ``import_adapter`` and ``mm-adapter convert --from peft`` in this process, and once through
``python -m mm_adapter`` in a real process; and a check that the model side reads JSON only through it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from test_bad_base import assert_one_line, command_refuses, deadline, process_refuses, refuses, snapshot

from mm_adapter import MMAdapterError
from mm_adapter.files.text import POSITIVE_INT, STRING, check_fields, parse_json, read_json, read_text
from mm_adapter.interop import import_adapter
from tiny import tiny_model
from tiny_text import REPO, one_thread, tiny_base_folder  # noqa: F401 (autouse fixture)

LIMIT = 1 << 20
# case: (how the file is made, what the line must say about it)
BAD_FILES = {
    "not UTF-8 on line 3": (lambda p: p.write_bytes(b'{\n  "a": 1,\n  "b": "caf\xe9"\n}'),
                            r"is not UTF-8 text \(byte 0xe9 at line 3, byte offset 23\)"),
    "not JSON": (lambda p: p.write_text('{\n  "a": 1,\n  "b": }'),
                 r"is not valid JSON \(Expecting value at line 3, column 8\)"),
    "empty": (lambda p: p.write_bytes(b""), r"is not valid JSON \(Expecting value at line 1, column 1\)"),
    "an array": (lambda p: p.write_text("[1, 2]"), "must be a JSON object, found a JSON array"),
    "a string": (lambda p: p.write_text('"text"'), "must be a JSON object, found a JSON string"),
    "nested too deeply": (lambda p: p.write_text("[" * 200_000), "nested too deeply"),
    "missing": (lambda p: None, "no such test config"),
    "a dangling link": (lambda p: p.symlink_to(p.parent / "nowhere"), "no such test config"),
    "a folder": (lambda p: p.mkdir(), r"is a folder, expected a test config \(a regular file\)"),
    "a FIFO": (lambda p: os.mkfifo(p), r"is a FIFO \(named pipe\), expected a test config"),
    "too large": (lambda p: (p.touch(), os.truncate(p, LIMIT + 1)),  # sparse: takes no disk
                  "is 1,048,577 bytes, more than the 1,048,576 a test config may have"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_read_json_refuses_each_bad_file_in_one_line_naming_it(tmp_path, case):
    """read_json: every way a JSON file can be bad is one MMAdapterError line naming the file and saying what is
    wrong (with the line/column of a decode or syntax error); a FIFO is refused without blocking on it."""
    make, pattern = BAD_FILES[case]
    path = tmp_path / "config.json"
    make(path)
    with deadline(10):
        refuses(lambda: read_json(path, "test config", expect=dict, max_bytes=LIMIT), path, pattern)


def test_devices_are_refused_before_being_read():
    """/dev/zero would never end and /dev/null is no file: both are refused from their stat, as character devices."""
    for device in ("/dev/zero", "/dev/null"):
        if os.path.exists(device):
            refuses(lambda device=device: read_text(device, "text file"), device,
                    "is a character device, expected a text file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_an_unreadable_file_is_one_line(tmp_path):
    """A file without read permission: one line with the system's reason."""
    path = tmp_path / "secret.json"
    path.write_text("{}")
    path.chmod(0)
    refuses(lambda: read_json(path, "config"), path, r"cannot read config \(Permission denied\)")


def test_good_text_reads_as_it_is(tmp_path):
    """What is right stays right: UTF-8 (also behind a byte-order mark, as Windows editors write it), any JSON value
    when no kind is asked for, a JSON array when an array is."""
    path = tmp_path / "a.json"
    path.write_bytes(b'\xef\xbb\xbf{"name": "caf\xc3\xa9"}')
    assert read_json(path, "config", expect=dict) == {"name": "café"}
    path.write_text("[1, 2]")
    assert read_json(path, "list", expect=list) == [1, 2] and read_json(path, "anything") == [1, 2]
    assert read_text(path) == "[1, 2]"
    assert parse_json("3", "metadata") == 3


def test_fields_are_type_checked_by_name():
    """check_fields: a missing required field, a field of the wrong type (true is not an integer, "4" is not
    either) and an unknown field are each one line naming the source and the field; null is allowed only for
    optional fields."""
    rules = {"layers": POSITIVE_INT, "name": STRING}
    check_fields({"layers": 4, "name": "x", "note": None}, "f.json", "config", rules, {"note": STRING})
    for data, pattern in (({"name": "x"}, r"config is missing required field\(s\) layers"),
                          ({"layers": True, "name": "x"}, "field 'layers' must be a positive integer, found true"),
                          ({"layers": "4", "name": "x"}, "field 'layers' must be a positive integer, found \"4\""),
                          ({"layers": 4, "name": None}, "field 'name' must be a string, found null"),
                          ({"layers": 4, "name": "x", "size": 1}, r"unknown field\(s\) size")):
        refuses(lambda data=data: check_fields(data, "f.json", "config", rules, allow_unknown=False), "f.json", pattern)


# ---- a foreign adapter's adapter_config.json, through the importer and the command ----

@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tiny_base_folder(tmp_path_factory.mktemp("base") / "base")


ADAPTER_CONFIGS = {  # case: (content of adapter_config.json, or "fifo"/"folder"; what the line must say)
    "not UTF-8": (b'{"peft_type": "ADAPTION_PROMPT", "base_model_name_or_path": "caf\xe9"}', "is not UTF-8 text"),
    "not JSON": (b'{"peft_type": "ADAPTION_PROMPT",', "is not valid JSON"),
    "a JSON array": (b'["ADAPTION_PROMPT"]', "must be a JSON object, found a JSON array"),
    "empty": (b"", "Expecting value at line 1, column 1"),
    "a folder": ("folder", "is a folder"),
    "a FIFO": ("fifo", r"is a FIFO \(named pipe\)"),
}


def peft_folder(root: Path, content: bytes | str) -> Path:
    folder = root / "peft"
    folder.mkdir()
    path = folder / "adapter_config.json"
    if content == "fifo":
        os.mkfifo(path)
    elif content == "folder":
        path.mkdir()
    else:
        path.write_bytes(content)
    (folder / "adapter_model.safetensors").write_bytes(b"unused: the config is read first")
    return folder


@pytest.mark.parametrize("case", ADAPTER_CONFIGS)
def test_bad_adapter_config_json_is_one_line_from_library_and_command(base, tmp_path, capsys, case):
    """A PEFT folder whose adapter_config.json is not UTF-8, not JSON, not an object, empty, a folder or a FIFO:
    import_adapter raises one line naming adapter_config.json, and `mm-adapter convert --from peft` exits 2 with
    that line, writes nothing and changes no file."""
    content, pattern = ADAPTER_CONFIGS[case]
    folder = peft_folder(tmp_path, content)
    named = folder / "adapter_config.json"
    before = snapshot(tmp_path)
    with deadline():
        message = refuses(lambda: import_adapter(tiny_model(), "peft", folder), named, pattern)
        err = command_refuses(["convert", "--from", "peft", "--base", base, folder, tmp_path / "out.safetensors"],
                              capsys, named, pattern)
    assert err == f"error: {message}\n"
    assert snapshot(tmp_path) == before and not (tmp_path / "out.safetensors").exists()


def test_fifo_adapter_config_in_a_real_process_does_not_hang(base, tmp_path):
    """`python -m mm_adapter convert --from peft` on a folder whose adapter_config.json is a FIFO nobody writes:
    exit 2 with one line naming it, instead of blocking forever (the process would be killed after 120 s)."""
    folder = peft_folder(tmp_path, "fifo")
    before = snapshot(tmp_path)
    process_refuses(["convert", "--from", "peft", "--base", base, folder, tmp_path / "out.safetensors"],
                    folder / "adapter_config.json", r"is a FIFO \(named pipe\)")
    assert snapshot(tmp_path) == before and not (tmp_path / "out.safetensors").exists()


MODEL_SIDE_READERS = ["mm_adapter/model/base.py", "mm_adapter/model/meta_format.py", "mm_adapter/model/adapter_file.py",
                      "mm_adapter/files/safe_load.py", "mm_adapter/encoders/clip.py", *sorted(
                          str(p.relative_to(REPO)) for p in (REPO / "mm_adapter" / "interop").glob("*.py"))]


def test_the_model_side_reads_text_and_json_only_through_textio():
    """No loader of bases or adapters reads text or parses JSON by itself (``read_text``, ``json.load``/``loads``,
    text-mode ``open``): they all go through textio, so none can fail with a UnicodeDecodeError or hang on a FIFO."""
    direct = re.compile(r"\.read_text\(|json\.loads?\(|\bopen\([^)]*\"r\"|\bopen\([^,)]*\)")
    found = [f"{name}:{number}: {line.strip()}" for name in MODEL_SIDE_READERS
             for number, line in enumerate((REPO / name).read_text().splitlines(), 1) if direct.search(line)]
    assert found == [], found


def test_a_metadata_json_error_gives_its_line_and_column():
    """JSON inside an adapter file's metadata is parsed by the same function: one line with line and column."""
    with pytest.raises(MMAdapterError) as info:
        parse_json('{"adapter_len": 3,\n "adapter_layers": }', "a.safetensors", "metadata field 'config'")
    assert_one_line(str(info.value), "a.safetensors", r"'config' is not valid JSON \(Expecting value at line 2, "
                                                      r"column 20\)")
