"""A bad base model (issue 12, class 1): whatever transformers, safetensors, gguf, sentencepiece, torch or json
would raise on it is one ``MMAdapterError`` line naming the file, and ``mm-adapter`` says it in one line, exit 2.

Every case starts from a copy of a good tiny base (a transformers folder, a Meta-format folder or a GGUF
file), spoils one file, and goes through ``load_base`` (the library) and ``mm-adapter generate --base``
in this process; one goes through ``python -m mm_adapter`` in a real process, under an address-space cap. Also the harness the other bad-input modules (test_bad_adapter_files, test_textio) share.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from test_base_loading import export_meta

from mm_adapter import MMAdapterError, load_base
from mm_adapter.model.base import smollm2_gguf_path
from tiny import tiny_model
from tiny_text import command_here, one_thread, tiny_base_folder  # noqa: F401 (autouse fixture)

CAP_BYTES = 4 << 30  # address space of a capped `python -m mm_adapter`: torch and transformers need ~2 GB of it


# ---- the harness: one line from the library, one line and exit 2 from the command, nothing touched ----

def snapshot(folder: Path) -> dict[Path, bytes]:
    """Every regular file under ``folder`` with its bytes (FIFOs and devices are not read)."""
    return {path: path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def assert_one_line(message: str, named: str | Path, pattern: str) -> None:
    assert "\n" not in message.strip() and "Traceback" not in message, message
    assert str(named) in message, f"{named} not named in: {message}"
    assert re.search(pattern, message), f"{pattern!r} not in: {message}"


def refuses(call: Callable[[], object], named: str | Path, pattern: str) -> str:
    """``call()`` raises one ``MMAdapterError`` line naming ``named`` and matching ``pattern``; returns it."""
    with pytest.raises(MMAdapterError) as info:
        call()
    assert_one_line(str(info.value), named, pattern)
    return str(info.value)


def command_refuses(argv: list[str], capsys, named: str | Path, pattern: str) -> str:
    """``mm-adapter ARGV`` in this process: exit 2, nothing on stdout, one ``error:`` line on stderr."""
    code, out, err = command_here([str(arg) for arg in argv], capsys)
    assert (code, out) == (2, ""), (code, out, err)
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert_one_line(err, named, pattern)
    return err


def process_refuses(argv: list[str], named: str | Path, pattern: str, cap: int | None = None,
                    timeout: float = 120) -> str:
    """``python -m mm_adapter ARGV`` in a real process (under an address-space cap when given): exit 2, one line."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    limit = (lambda: resource.setrlimit(resource.RLIMIT_AS, (cap, cap))) if cap else None
    done = subprocess.run([sys.executable, "-m", "mm_adapter", *map(str, argv)], capture_output=True, text=True,
                          env=env, timeout=timeout, preexec_fn=limit, check=False)
    assert (done.returncode, done.stdout) == (2, ""), (done.returncode, done.stdout, done.stderr)
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert_one_line(done.stderr, named, pattern)
    return done.stderr


@contextmanager
def deadline(seconds: int = 30) -> Iterator[None]:
    """Fail, instead of hanging the suite, if the block blocks (say, on opening a FIFO for reading)."""
    def expire(signum, frame):
        raise TimeoutError(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ---- bad bases ----

@pytest.fixture(scope="module")
def good(tmp_path_factory) -> dict[str, Path]:
    """A good tiny transformers folder (with tokenizer) and a good Meta-format folder to spoil copies of."""
    root = tmp_path_factory.mktemp("good-bases")
    meta = root / "meta"
    meta.mkdir()
    export_meta(tiny_model("llama-gqa", vocab_size=60), meta)
    return {"hf": tiny_base_folder(root / "hf"), "meta": meta}


def edit_json(name: str, **fields) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        data = json.loads((folder / name).read_text())
        data.update(fields)
        (folder / name).write_text(json.dumps(data))
    return apply


def write(name: str, content: bytes | str) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        path = folder / name
        path.unlink(missing_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return apply


def cut(name: str, size: int) -> Callable[[Path], None]:
    return lambda folder: os.truncate(folder / name, size)


def replace(name: str, kind: str) -> Callable[[Path], None]:
    """``name`` becomes a folder or a FIFO: reading either the usual way fails or blocks."""
    def apply(folder: Path) -> None:
        (folder / name).unlink()
        (folder / name).mkdir() if kind == "folder" else os.mkfifo(folder / name)
    return apply


def no_weights(folder: Path) -> None:
    (folder / "model.safetensors").unlink()


def empty_weights(folder: Path) -> None:
    save_file({}, folder / "model.safetensors", metadata={"format": "pt"})


def pickled_garbage(folder: Path) -> None:
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x02}q\x00(X")  # a pickle cut inside its first string


def index_without_shard(folder: Path) -> None:
    (folder / "model.safetensors").unlink()
    index = {"metadata": {}, "weight_map": {"lm_head.weight": "model-00001-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


def edit_shard(key: str, value: object) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        shard = torch.load(folder / "consolidated.00.pth")
        shard[key] = value
        torch.save(shard, folder / "consolidated.00.pth")
    return apply


def truncated_smollm2(folder: Path) -> None:
    try:
        source = smollm2_gguf_path()
    except MMAdapterError as error:
        pytest.skip(str(error))
    with open(source, "rb") as handle:
        (folder / "model.gguf").write_bytes(handle.read(1000))


NOT_UTF8 = b'{"model_type": "llama", "name": "caf\xe9"}'
NOISE = bytes(range(256)) * 16  # bytes of no format (fixed, so every run meets the same error)
# case: (which good base, the damage, the file the line must name (relative to the copy), what it must say)
BAD = {
    "config not JSON": ("hf", write("config.json", "{nope"), "config.json",
                        r"model config is not valid JSON \(.* at line 1, column 2\)"),
    "config not UTF-8": ("hf", write("config.json", NOT_UTF8), "config.json", r"not UTF-8 text \(byte 0xe9 at line 1"),
    "config a list": ("hf", write("config.json", "[1, 2]"), "config.json", "must be a JSON object, found a JSON array"),
    "config without model_type": ("hf", write("config.json", "{}"), "", r"ValueError: Unrecognized model"),
    "config field of the wrong type": ("hf", edit_json("config.json", hidden_size="64"), "",
                                       r"Field 'hidden_size' expected int"),
    "config with zero heads": ("hf", edit_json("config.json", num_attention_heads=0), "", "ZeroDivisionError"),
    "config of another width": ("hf", edit_json("config.json", hidden_size=128), "",
                                "shapes of tensors in its weights do not match its config.json"),
    "config a FIFO": ("hf", replace("config.json", "fifo"), "config.json", r"is a FIFO \(named pipe\)"),
    "weights truncated": ("hf", cut("model.safetensors", 300), "model.safetensors",
                          r"not a readable safetensors file \(truncated or corrupt\?\)"),
    "weights random bytes": ("hf", write("model.safetensors", NOISE), "model.safetensors",
                             "not a readable safetensors file"),
    "weights a folder": ("hf", replace("model.safetensors", "folder"), "model.safetensors", "is a folder"),
    "no weight files": ("hf", no_weights, "", "has config.json but no weights"),
    "weights without tensors": ("hf", empty_weights, "", r"the weights lack \d+ tensor\(s\)"),
    "pickled weights cut short": ("hf", pickled_garbage, "", "cannot load this transformers model folder"),
    "index naming a missing shard": ("hf", index_without_shard, "model-00001-of-00002.safetensors",
                                     "no such weights file"),
    "tokenizer.json not JSON": ("hf", write("tokenizer.json", '{"model": '), "tokenizer.json", "not valid JSON"),
    "tokenizer.json of the wrong structure": ("hf", write("tokenizer.json", '{"model": 5}'), "",
                                              r"KeyError|Exception"),
    "tokenizer.json a FIFO": ("hf", replace("tokenizer.json", "fifo"), "tokenizer.json", r"is a FIFO \(named pipe\)"),
    "tokenizer_config.json not UTF-8": ("hf", write("tokenizer_config.json", b"\xff\xfe{}"), "tokenizer_config.json",
                                        "not UTF-8 text"),
    "GGUF of random bytes": ("hf", write("model.gguf", NOISE), "model.gguf", "not a GGUF file"),
    "GGUF empty": ("hf", write("model.gguf", b""), "model.gguf", "not a GGUF file"),
    "GGUF magic then garbage": ("hf", write("model.gguf", b"GGUF" + NOISE), "model.gguf",
                                "not a readable GGUF file"),
    "GGUF truncated": ("hf", truncated_smollm2, "model.gguf", r"not a readable GGUF file .*struct.error"),
    "Meta params not UTF-8": ("meta", write("params.json", b'{"dim": 64, "note": "\xe9"}'), "params.json",
                              "not UTF-8 text"),
    "Meta params a list": ("meta", write("params.json", "[]"), "params.json", "must be a JSON object"),
    "Meta params dim a string": ("meta", edit_json("params.json", dim="64"), "params.json",
                                 "field 'dim' must be a positive integer"),
    "Meta params heads not dividing": ("meta", edit_json("params.json", n_heads=3), "",
                                       r"does not fit its params.json \(RuntimeError"),
    "Meta params a folder": ("meta", replace("params.json", "folder"), "params.json", "is a folder"),
    "Meta shard truncated": ("meta", cut("consolidated.00.pth", 2000), "consolidated.00.pth",
                             "not a readable torch checkpoint"),
    "Meta shard holding a number": ("meta", edit_shard("norm.weight", 5), "consolidated.00.pth",
                                    "entry 'norm.weight' is a int, expected a tensor"),
    "Meta tensor of the wrong rank": ("meta", edit_shard("norm.weight", torch.zeros(2, 2)), "",
                                      r"'norm.weight' has shape \[2, 2\], expected 1 dimension"),
    "Meta tokenizer garbage": ("meta", write("tokenizer.model", NOISE[:512]), "tokenizer.model",
                               "not a readable sentencepiece tokenizer"),
}


def spoiled(good: dict[str, Path], tmp_path: Path, case: str) -> tuple[Path, Path, str]:
    """A spoiled copy for ``case``: (the spec to load, the path the line must name, the pattern)."""
    kind, damage, named, pattern = BAD[case]
    folder = tmp_path / "base"
    shutil.copytree(good[kind], folder)
    damage(folder)
    spec = folder / "model.gguf" if case.startswith("GGUF") else folder
    return spec, folder / named if named else folder, pattern


@pytest.mark.parametrize("case", BAD)
def test_bad_base_is_one_line_from_the_library_and_the_command(good, tmp_path, capsys, case):
    """Each spoiled base: load_base raises one MMAdapterError line naming the file (or, for what only
    transformers can judge, the folder) and what is wrong; `mm-adapter generate --base` exits 2 with that one
    line and no traceback; no file is changed and nothing blocks on a FIFO."""
    spec, named, pattern = spoiled(good, tmp_path, case)
    before = snapshot(tmp_path)
    with deadline():
        message = refuses(lambda: load_base(str(spec)), named, pattern)
        err = command_refuses(["generate", "--base", spec, "--instruction", "hi", "--threads", "1"], capsys, named,
                              pattern)
    assert err == f"error: {message}\n"
    assert snapshot(tmp_path) == before


def test_a_config_declaring_many_more_layers_than_stored_is_refused_before_memory_is_taken(good, tmp_path):
    """A 4-layer model whose config.json says 200,000 layers: transformers would fill the missing layers with ~30 GB
    of fresh memory before reporting them; `python -m mm_adapter` under a 4 GB address-space cap refuses it in one
    line naming config.json and the layer counts (a regression fails on the cap instead of exhausting the machine)."""
    folder = tmp_path / "base"
    shutil.copytree(good["hf"], folder)
    edit_json("config.json", num_hidden_layers=200_000)(folder)
    before = snapshot(tmp_path)
    process_refuses(["generate", "--base", folder, "--instruction", "hi", "--threads", "1"], folder / "config.json",
                    r"num_hidden_layers is 200000, but the weights hold only layers 0-3", cap=CAP_BYTES)
    assert snapshot(tmp_path) == before
