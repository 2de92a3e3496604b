"""CTranslate2 Whisper models (faster-whisper's folders) read into transformers' ``WhisperEncoder``, exactly.

Many users have Whisper on disk only as a CTranslate2 folder (``model.bin`` + ``config.json``), which neither
transformers nor torch can read, and whose Python API has no getter for the weights. ``model.bin`` is CTranslate2's
own binary spec (``ctranslate2/specs/model_spec.py`` writes it, ``src/models/model.cc`` reads it; all little-endian):

    u32 binary version (6) | string spec name ("WhisperSpec") | u32 spec revision | u32 variable count
    per variable: string name | u8 rank | u32 dims[rank] | u8 dtype | u32 byte count | bytes
    u32 alias count | per alias: string alias | string target           (string: u16 length with NUL, bytes, NUL)

Only the encoder's variables are kept (the decoder's are skipped by seeking), each checked as it is read: names
printable and bounded, rank at most ``MAX_RANK``, dtype known, the byte count equal to its shape times its dtype's
size and within the file's length; sizes come from the tensors, never from ``config.json``. A model given in parts
(``model.bin`` cut into pieces that pip packages could carry) is read as one stream across them.

Mapping: conv1/conv2 and the positions as they are; each layer's fused ``self_attention/linear_0`` (q, k, v stacked)
is split in three (CTranslate2 stores k's bias as zeros: Whisper's k projection has none, so a non-zero one is
refused); ``linear_1`` is ``out_proj``; ``ffn/linear_0``/``linear_1`` are ``fc1``/``fc2``; gamma/beta are LayerNorm
weight/bias. int8/int16 weights are stored with a ``weight_scale`` and are dequantised (q / scale): exact for
the stored values, not for CTranslate2's integer arithmetic.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mm_adapter.errors import MMAdapterError
from mm_adapter.files.text import read_bytes, regular_file_size

BINARY_VERSION = 6  # what CTranslate2's writer produces (specs/model_spec.py CURRENT_BINARY_VERSION)
WHISPER_SPEC = "WhisperSpec"
# DataType order of include/ctranslate2/types.h
DTYPES = {0: np.dtype("<f4"), 1: np.dtype("i1"), 2: np.dtype("<i2"), 3: np.dtype("<i4"), 4: np.dtype("<f2"),
          5: "bfloat16"}
MAX_RANK = 8
MAX_NAME_BYTES = 1024
MAX_VARIABLES = 1_000_000
_BLOCK = 1 << 20


class PartsReader:
    """The bytes of one file given as one or more parts, read in order as one stream (a variable may cross a part's
    end); every read is checked against the total length, which comes from the files."""

    def __init__(self, paths: list[Path]):
        self.paths = paths
        self.sizes = [regular_file_size(path, "CTranslate2 model file") for path in paths]
        self.size = sum(self.sizes)
        self.position = 0
        self.name = str(paths[0]) if len(paths) == 1 else f"{paths[0]} (+{len(paths) - 1} part(s))"

    def _truncated(self, what: str) -> MMAdapterError:
        return MMAdapterError(f"{self.name}: truncated CTranslate2 model ({what} at byte {self.position:,} runs past "
                              f"the end, {self.size:,} bytes)")

    def read(self, count: int, what: str) -> bytes:
        if count < 0 or self.position + count > self.size:
            raise self._truncated(what)
        out, position, start = bytearray(), self.position, 0
        for path, size in zip(self.paths, self.sizes, strict=True):
            if position < start + size and len(out) < count:
                try:
                    with open(path, "rb") as handle:
                        handle.seek(position - start)
                        block = handle.read(min(count - len(out), start + size - position))
                except OSError as error:
                    raise MMAdapterError(f"{path}: cannot read CTranslate2 model ({error.strerror or error})") from None
                out += block
                position += len(block)
            start += size
        if len(out) != count:
            raise self._truncated(what)  # a part shrank while being read
        self.position += count
        return bytes(out)

    def skip(self, count: int, what: str) -> None:
        if self.position + count > self.size:
            raise self._truncated(what)
        self.position += count

    def unpack(self, fmt: str, what: str):
        return struct.unpack("<" + fmt, self.read(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        length = self.unpack("H", what)
        if not 1 <= length <= MAX_NAME_BYTES:
            raise MMAdapterError(f"{self.name}: not a CTranslate2 model ({what} of {length} bytes at byte "
                                 f"{self.position - 2:,})")
        raw = self.read(length, what)
        try:
            text = raw[:-1].decode("ascii")
        except UnicodeDecodeError:
            text = None
        if raw[-1] != 0 or text is None or not text.isprintable():
            raise MMAdapterError(f"{self.name}: not a CTranslate2 model ({what} at byte {self.position - length:,} is "
                                 "not a printable name)")
        return text


def _tensor(raw: bytes, dtype, shape: list[int]) -> torch.Tensor:
    if dtype == "bfloat16":
        return torch.frombuffer(bytearray(raw), dtype=torch.bfloat16).reshape(shape).float()
    return torch.from_numpy(np.frombuffer(raw, dtype=dtype).reshape(shape).copy())


def read_model_bin(paths: list[Path], keep: Callable[[str], bool], expect_spec: str | None = None
                   ) -> tuple[str, dict[str, torch.Tensor]]:
    """(spec name, {variable name: tensor}) of a ``model.bin`` (given in one or more parts), keeping only the
    variables ``keep`` accepts and aliases that point at them; every size is checked against the file. A spec other
    than ``expect_spec`` is refused as soon as its name is read."""
    stream = PartsReader(paths)
    if stream.size < 4:
        raise MMAdapterError(f"{stream.name}: not a CTranslate2 model ({stream.size} bytes)")
    version = stream.unpack("I", "binary version")
    if version != BINARY_VERSION:
        raise MMAdapterError(f"{stream.name}: not a CTranslate2 model this reader knows (binary version {version}; "
                             f"it reads version {BINARY_VERSION}, what CTranslate2's writer produces)")
    spec = stream.string("spec name")
    if expect_spec is not None and spec != expect_spec:
        raise MMAdapterError(f"{stream.name}: a CTranslate2 {spec} model, not {expect_spec.removesuffix('Spec')} "
                             f"({expect_spec})")
    stream.unpack("I", "spec revision")
    count = stream.unpack("I", "variable count")
    if count > MAX_VARIABLES:
        raise MMAdapterError(f"{stream.name}: not a CTranslate2 model ({count:,} variables declared)")
    found: dict[str, torch.Tensor] = {}
    for _ in range(count):
        name = stream.string("variable name")
        rank = stream.unpack("B", f"rank of {name}")
        if rank > MAX_RANK:
            raise MMAdapterError(f"{stream.name}: variable {name} has rank {rank}, over {MAX_RANK}")
        shape = [stream.unpack("I", f"shape of {name}") for _ in range(rank)]
        type_id = stream.unpack("B", f"dtype of {name}")
        if type_id not in DTYPES:
            raise MMAdapterError(f"{stream.name}: variable {name} has unknown dtype id {type_id}")
        nbytes = stream.unpack("I", f"byte count of {name}")
        itemsize = 2 if DTYPES[type_id] == "bfloat16" else DTYPES[type_id].itemsize
        if nbytes != int(np.prod(shape, dtype=np.int64)) * itemsize:
            raise MMAdapterError(f"{stream.name}: variable {name} declares {nbytes:,} bytes, but shape {shape} of "
                                 f"its dtype takes {int(np.prod(shape, dtype=np.int64)) * itemsize:,}")
        if keep(name):
            found[name] = _tensor(stream.read(nbytes, f"data of {name}"), DTYPES[type_id], shape)
        else:
            stream.skip(nbytes, f"data of {name}")
    for _ in range(stream.unpack("I", "alias count")):
        alias, target = stream.string("alias name"), stream.string("alias target")
        if keep(alias) and target in found:
            found[alias] = found[target]
    if stream.position != stream.size:
        extra = stream.size - stream.position
        raise MMAdapterError(f"{stream.name}: {extra:,} bytes follow the end of the CTranslate2 model (parts of "
                             "something else, or parts out of order)")
    return spec, found


def ct2_config(folder: Path) -> dict:
    """The folder's ``config.json`` (CTranslate2 writes one beside every model.bin), or {} without one."""
    path = folder / "config.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(read_bytes(path, "CTranslate2 config"))
    except ValueError as error:
        raise MMAdapterError(f"{path}: not valid JSON ({str(error)[:80]})") from None
    return data if isinstance(data, dict) else {}


def _weight(variables: dict[str, torch.Tensor], scope: str, where: str) -> torch.Tensor:
    """``scope/weight`` as float32, dequantised with its ``weight_scale`` when stored as integers."""
    weight = variables[f"{scope}/weight"]
    if weight.is_floating_point():
        return weight.float()
    scale = variables.get(f"{scope}/weight_scale")
    if scale is None:
        raise MMAdapterError(f"{where}: {scope}/weight is stored as integers without a weight_scale")
    scale = scale.float()
    return weight.float() / (scale[:, None] if scale.ndim == 1 else scale)


def encoder_state(variables: dict[str, torch.Tensor], where: str) -> tuple[dict[str, torch.Tensor], dict]:
    """transformers ``WhisperEncoder`` state dict and config sizes from CTranslate2's encoder variables; the sizes
    are read off the tensors and every tensor is checked against them."""
    def get(name: str) -> torch.Tensor:
        if name not in variables:
            raise MMAdapterError(f"{where}: CTranslate2 Whisper model without variable {name}")
        return variables[name]

    conv1 = get("encoder/conv1/weight")
    if conv1.ndim != 3:
        raise MMAdapterError(f"{where}: encoder/conv1/weight has shape {list(conv1.shape)}, expected [width, mels, 3]")
    width, mels = conv1.shape[0], conv1.shape[1]
    layers = 0
    while f"encoder/layer_{layers}/self_attention/linear_0/weight" in variables:
        layers += 1
    heads = int(get("encoder/num_heads").reshape(-1)[0]) if "encoder/num_heads" in variables else None
    if not layers or not heads or width % heads:
        raise MMAdapterError(f"{where}: CTranslate2 Whisper encoder with {layers} layers and {heads} heads of a width "
                             f"of {width}")
    ffn = get("encoder/layer_0/ffn/linear_0/weight").shape[0]
    positions = get("encoder/position_encodings/encodings")
    sizes = {"num_mel_bins": mels, "d_model": width, "encoder_layers": layers, "encoder_attention_heads": heads,
             "encoder_ffn_dim": ffn, "max_source_positions": positions.shape[0]}
    state = {"conv1.weight": conv1.float(), "conv1.bias": get("encoder/conv1/bias").float(),
             "conv2.weight": get("encoder/conv2/weight").float(), "conv2.bias": get("encoder/conv2/bias").float(),
             "embed_positions.weight": positions.float(),
             "layer_norm.weight": get("encoder/layer_norm/gamma").float(),
             "layer_norm.bias": get("encoder/layer_norm/beta").float()}
    for i in range(layers):
        ours, theirs = f"layers.{i}", f"encoder/layer_{i}"
        get(f"{theirs}/self_attention/linear_0/weight")
        q, k, v = _weight(variables, f"{theirs}/self_attention/linear_0", where).split(width)
        q_bias, k_bias, v_bias = get(f"{theirs}/self_attention/linear_0/bias").float().split(width)
        if k_bias.abs().max() != 0:
            raise MMAdapterError(f"{where}: {theirs}/self_attention has a non-zero key bias, which Whisper's "
                                 "k_proj does not have; not a Whisper encoder converted by CTranslate2")
        state |= {f"{ours}.self_attn.q_proj.weight": q, f"{ours}.self_attn.q_proj.bias": q_bias,
                  f"{ours}.self_attn.k_proj.weight": k,
                  f"{ours}.self_attn.v_proj.weight": v, f"{ours}.self_attn.v_proj.bias": v_bias}
        for module, scope in (("self_attn.out_proj", "self_attention/linear_1"), ("fc1", "ffn/linear_0"),
                              ("fc2", "ffn/linear_1")):
            get(f"{theirs}/{scope}/weight")
            state[f"{ours}.{module}.weight"] = _weight(variables, f"{theirs}/{scope}", where)
            state[f"{ours}.{module}.bias"] = get(f"{theirs}/{scope}/bias").float()
        for module, scope in (("self_attn_layer_norm", "self_attention/layer_norm"),
                              ("final_layer_norm", "ffn/layer_norm")):
            state[f"{ours}.{module}.weight"] = get(f"{theirs}/{scope}/gamma").float()
            state[f"{ours}.{module}.bias"] = get(f"{theirs}/{scope}/beta").float()
    return state, sizes


def read_ct2_whisper(paths: list[Path]) -> tuple[dict[str, torch.Tensor], dict]:
    """The encoder state dict and sizes of a CTranslate2 Whisper ``model.bin`` (one file or its parts in order);
    a model of another type is refused by its spec name, before any tensor is read."""
    stream_name = str(paths[0]) if len(paths) == 1 else f"{paths[0]} (+{len(paths) - 1} part(s))"
    _, variables = read_model_bin(paths, lambda name: name.startswith("encoder/"), expect_spec=WHISPER_SPEC)
    return encoder_state(variables, stream_name)
