"""Adapter files are not trusted (issue 12, class 2): metadata is type-checked, sizes come from the stored tensors,
non-finite or non-float tensors are refused; each as one ``MMAdapterError`` line naming the file and the field or
key, and as one ``error:`` line with exit 2 from ``mm-adapter``. The same rules hold for the official, litgpt and
PEFT importers.

Every case spoils a copy of a good adapter made for a tiny base folder and goes through the library
(``load_multimodal_adapter``, which reads, checks and applies; ``import_adapter`` for foreign files) and through
``mm-adapter generate``/``demo``/``convert`` in this process. Cases whose metadata claims gigabytes run with this
process's address space capped just above its current size, and one runs as ``python -m mm_adapter demo`` under a
4 GB cap: a regression fails on the cap instead of exhausting the machine.
"""

from __future__ import annotations

import json
import resource
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from test_bad_base import CAP_BYTES, command_refuses, process_refuses, refuses, snapshot

from mm_adapter import AdapterConfig, attach_adapter, load_base, save_adapter
from mm_adapter.encoders.clip import TINY_VIT, VisualConfig, build_encoder
from mm_adapter.encoders.projection import VisualProjection, visual_extras
from mm_adapter.interop import import_adapter
from mm_adapter.pretrained import load_multimodal_adapter
from tiny_text import one_thread, tiny_base_folder  # noqa: F401 (autouse fixture)

HUGE = 1 << 32  # a width whose float32 LayerNorm alone is 32 GB
VISUAL = VisualConfig(clip_model=TINY_VIT, clip_layers=2)
NAN = float("nan")


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """A tiny base folder, and for it: a text-only adapter, a multimodal one, and official, litgpt and PEFT files."""
    root = tmp_path_factory.mktemp("good-adapters")
    base = tiny_base_folder(root / "base")
    model, _ = load_base(str(base))
    attach_adapter(model, AdapterConfig(adapter_len=3, adapter_layers=2))
    projection = VisualProjection.from_config(VISUAL, 64)
    tensors, metadata = visual_extras(VISUAL, projection, build_encoder(VISUAL))
    paths = {"base": base, "text": save_adapter(model, root / "text.safetensors"),
             "visual": save_adapter(model, root / "visual.safetensors", extra_tensors=tensors,
                                    extra_metadata=metadata)}
    paths.update(foreign_files(root))
    return paths


def foreign_files(root: Path) -> dict[str, Path]:
    """An official release, a litgpt checkpoint and a PEFT folder for the tiny base (4 layers, 4 heads, width 64)."""
    prompts = torch.randn(20, 64, generator=torch.Generator().manual_seed(1))  # the release's 10 prompts x 2 layers
    official = {"adapter_query.weight": prompts, **{f"layers.{i}.attention.gate": torch.full((1, 4, 1, 1), 0.1)
                                                    for i in range(4)}}
    torch.save(official, root / "official.pth")
    litgpt = {f"transformer.h.{i}.attn.{name}": value for i in (2, 3) for name, value in
              (("adapter_wte.weight", prompts[:3]), ("gating_factor", torch.full((1, 1, 4, 1), 0.1)))}
    torch.save({"model": litgpt}, root / "litgpt.pth")
    peft = root / "peft"
    peft.mkdir()
    (peft / "adapter_config.json").write_text(json.dumps({"peft_type": "ADAPTION_PROMPT", "adapter_len": 3,
                                                          "adapter_layers": 2, "target_modules": "self_attn"}))
    save_file({f"base_model.model.model.layers.{i}.self_attn.{name}": value for i in (2, 3) for name, value in
               (("adaption_prompt", prompts[None, :3].clone()), ("adaption_gate", torch.tensor([0.1])))},
              peft / "adapter_model.safetensors")
    return {"official": root / "official.pth", "litgpt": root / "litgpt.pth", "peft": peft}


@pytest.fixture(scope="module")
def model(made):
    """The tiny base, loaded once: a refused file leaves it untouched (everything is checked before it is applied)."""
    return load_base(str(made["base"]))[0]


def read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), "pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}, handle.metadata()


def json_field(key: str, **fields) -> dict:
    """A metadata change: ``fields`` merged into the JSON object stored under ``key`` (None deletes a field)."""
    return {"json": (key, fields)}


def spoil_ours(source: Path, target: Path, metadata: dict | None = None, tensors: dict | None = None) -> Path:
    """``source`` with metadata entries and tensors replaced (None deletes), written as ``target``."""
    stored, meta = read(source)
    for key, value in (metadata or {}).items():
        if key == "json":
            name, fields = value
            data = json.loads(meta[name])
            data.update(fields)
            meta[name] = json.dumps({k: v for k, v in data.items() if v is not None})
        elif value is None:
            meta.pop(key)
        else:
            meta[key] = value
    for key, value in (tensors or {}).items():
        stored.pop(key) if value is None else stored.__setitem__(key, value)
    save_file(stored, target, metadata=meta)
    return target


# case: (good file, metadata changes, tensor changes, what the line must say besides the file)
OURS = {
    "config a JSON list": ("text", {"config": "[1, 2]"}, {}, "metadata field 'config' must be a JSON object"),
    "config not JSON": ("text", {"config": "{adapter_len"}, {}, r"'config' is not valid JSON \(.* column 2\)"),
    "adapter_len a string": ("text", json_field("config", adapter_len="3"), {}, "adapter_len: must be an integer"),
    "base a JSON list": ("text", {"base": "[]"}, {}, "metadata field 'base' must be a JSON object"),
    "base num_layers a string": ("text", json_field("base", num_layers="4"), {},
                                 "'base' field 'num_layers' must be a positive integer, found \"4\""),
    "base hidden_size a float": ("text", json_field("base", hidden_size=64.0), {},
                                 "'hidden_size' must be a positive integer, found 64.0"),
    "base num_heads zero": ("text", json_field("base", num_heads=0), {}, "'num_heads' must be a positive integer"),
    "base architecture a number": ("text", json_field("base", architecture=7), {}, "'architecture' must be a string"),
    "base fingerprint a list": ("text", json_field("base", fingerprint=[1]), {}, "'fingerprint' must be a string"),
    "base without vocab_size": ("text", json_field("base", vocab_size=None), {},
                                r"missing required field\(s\) vocab_size"),
    "base with an unknown field": ("text", json_field("base", colour="red"), {}, r"unknown field\(s\) colour"),
    "format of another kind": ("text", {"format": "pt"}, {}, "metadata format is 'pt', expected 'mm-adapter/1'"),
    "prompt NaN": ("text", {}, {"layers.3.prompt": torch.full((3, 64), NAN)},
                   r"layers.3.prompt holds 192 non-finite value\(s\)"),
    "gate infinite": ("text", {}, {"layers.2.gate": torch.tensor([0.0, float("inf"), 0.0, 0.0])},
                      r"layers.2.gate holds 1 non-finite value\(s\)"),
    "prompt of integers": ("text", {}, {"layers.2.prompt": torch.zeros(3, 64, dtype=torch.int64)},
                           "layers.2.prompt has dtype int64, expected floating point"),
    "gate missing": ("text", {}, {"layers.2.gate": None}, "missing tensor layers.2.gate"),
    "visual projection NaN": ("visual", {}, {"visual.proj.0.weight": torch.full((64, 128), NAN)},
                              r"visual.proj.0.weight holds 8192 non-finite value\(s\)"),
    "visual_in_dim not a number": ("visual", {"visual_in_dim": "wide"}, {},
                                   "metadata visual_in_dim is 'wide', but visual.proj.0.weight takes 128 features"),
    "visual config a JSON list": ("visual", {"visual": "[]"}, {}, "visual config must be a JSON object"),
    "visual tensor missing": ("visual", {}, {"visual.proj.2.bias": None}, "missing visual.proj.2.bias"),
    "visual tensor unexpected": ("visual", {}, {"visual.extra": torch.zeros(2)}, "unexpected visual.extra"),
    "visual projection of integers": ("visual", {}, {"visual.proj.2.bias": torch.zeros(64, dtype=torch.int32)},
                                      "visual.proj.2.bias has dtype int32, expected floating point"),
    "visual width of another encoder depth": ("visual", json_field("visual", clip_layers=1), {},
                                              "takes 128 features, but mm-tiny-vit at depths 1 gives 64"),
}
HUGE_CASES = {  # metadata claiming sizes that would take gigabytes if anything were built from it
    "visual_in_dim huge": ("visual", {"visual_in_dim": str(HUGE)}, {},
                           f"metadata visual_in_dim is '{HUGE}', but visual.proj.0.weight takes 128 features"),
    "visual hidden width huge": ("visual", json_field("visual", visual_hidden=HUGE), {},
                                 rf"visual.proj.0.bias has shape \[64\], but the visual config and base need \[{HUGE}\]"),
    "adapter_layers huge": ("text", json_field("config", adapter_layers=10**9), {},  # refused by the config's bound
                            "adapter config adapter_layers: must be <= 1024, got 1000000000"),
    "adapter_layers over the tensors": ("text", json_field("config", adapter_layers=1000), {},
                                        "do not match the config's top 1000 of 4"),
    "base num_layers huge": ("text", json_field("base", num_layers=10**12), {},
                             "do not match the config's top 2 of 1000000000000"),
}


@contextmanager
def capped_address_space(extra: int = 2 << 30) -> Iterator[None]:
    """This process may map at most ``extra`` bytes more than it has now (an allocation beyond fails, not the
    machine); the previous limit comes back afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/status") as status:
        used = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    cap = used + extra if hard == resource.RLIM_INFINITY else min(used + extra, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def command_for(made: dict[str, Path], kind: str, adapter: Path) -> list:
    """The command that reads ``adapter``: generate for text-only files, demo for multimodal ones."""
    if kind == "text":
        return ["generate", "--base", made["base"], "--adapter", adapter, "--instruction", "hi", "--threads", "1"]
    return ["demo", "--base", made["base"], "--adapter", adapter, "--question", "Which?", "--choices", "a", "b",
            "--threads", "1"]


def check_ours(made, model, tmp_path, capsys, case: tuple) -> None:
    kind, metadata, tensors, pattern = case
    path = spoil_ours(made[kind], tmp_path / "bad.safetensors", metadata, tensors)
    before = snapshot(tmp_path)
    message = refuses(lambda: load_multimodal_adapter(model, path, "cpu"), path, pattern)
    err = command_refuses(command_for(made, kind, path), capsys, path, pattern)
    assert err == f"error: {message}\n"
    assert snapshot(tmp_path) == before


def test_the_good_files_load(made):
    """Guard for the cases below: the unspoiled multimodal adapter loads with its encoder and projection, and every
    foreign file imports, so each refusal below is caused by its one change."""
    model, _ = load_base(str(made["base"]))  # its own: this one gets the adapter applied
    encoder, projection = load_multimodal_adapter(model, made["visual"], "cpu")
    assert projection.in_dim == encoder.feature_dim == 128
    for source in ("official", "litgpt", "peft"):
        options = {"layout": "pre-0.5.5"} if source == "litgpt" else {}
        assert import_adapter(model, source, made[source], **options).config.adapter_layers == 2


@pytest.mark.parametrize("case", OURS)
def test_bad_adapter_file_is_one_line_naming_file_and_field(made, model, tmp_path, capsys, case):
    """Each spoiled adapter file (metadata of the wrong type or kind, NaN/inf or integer tensors, a visual part
    that does not fit): one MMAdapterError line naming the file and the field or key from the library, and the
    same line with exit 2 from `mm-adapter generate`/`demo`; no file changes."""
    check_ours(made, model, tmp_path, capsys, OURS[case])


@pytest.mark.parametrize("case", HUGE_CASES)
def test_sizes_come_from_the_tensors_not_the_metadata(made, model, tmp_path, capsys, case):
    """A file of a few kilobytes whose metadata claims a 2**32-wide visual input or hidden layer, 10**9 adapted
    layers or a 10**12-layer base is refused in one line from what the stored tensors hold, with this process
    capped at +2 GB of address space (without the fix each would allocate gigabytes first)."""
    with capped_address_space():
        check_ours(made, model, tmp_path, capsys, HUGE_CASES[case])


def test_huge_visual_width_in_a_real_process_under_a_memory_cap(made, tmp_path):
    """`python -m mm_adapter demo` with the 3 KB-metadata file claiming a 2**32-wide visual input, under a 4 GB
    address-space cap (a tiny base and encoder run in it): exit 2, one line naming the file and visual_in_dim."""
    kind, metadata, tensors, pattern = HUGE_CASES["visual_in_dim huge"]
    path = spoil_ours(made[kind], tmp_path / "huge.safetensors", metadata, tensors)
    before = snapshot(tmp_path)
    process_refuses(command_for(made, kind, path), path, pattern, cap=CAP_BYTES)
    assert snapshot(tmp_path) == before


def spoil_pickle(source: Path, target: Path, key: str, value: torch.Tensor, wrapper: str | None = None) -> Path:
    state = torch.load(source)
    (state[wrapper] if wrapper else state)[key] = value
    torch.save(state, target)
    return target


def spoil_peft(source: Path, target: Path, key: str | None = None, value: torch.Tensor | None = None,
               **config) -> Path:
    shutil.copytree(source, target)
    if key is not None:
        tensors, _ = read(target / "adapter_model.safetensors")
        save_file({**tensors, key: value}, target / "adapter_model.safetensors")
    data = json.loads((target / "adapter_config.json").read_text())
    (target / "adapter_config.json").write_text(json.dumps({**data, **config}))
    return target


PEFT_PROMPT = "base_model.model.model.layers.3.self_attn.adaption_prompt"
FOREIGN = {  # case: (format, how to spoil a copy, the file the line names, what it must say)
    "official gate NaN": ("official", lambda s, t: spoil_pickle(s, t / "r.pth", "layers.3.attention.gate",
                                                                  torch.full((1, 4, 1, 1), NAN)),
                          "r.pth", r"layers.3.attention.gate holds 4 non-finite value\(s\)"),
    "official prompts infinite": ("official", lambda s, t: spoil_pickle(s, t / "r.pth", "adapter_query.weight",
                                                                          torch.full((20, 64), float("-inf"))),
                                  "r.pth", r"adapter_query.weight rows 0-9 holds 640 non-finite"),
    "official prompts of integers": ("official", lambda s, t: spoil_pickle(s, t / "r.pth", "adapter_query.weight",
                                                                             torch.ones(20, 64, dtype=torch.int64)),
                                     "r.pth", "has dtype int64, expected floating point"),
    "litgpt prompt NaN": ("litgpt", lambda s, t: spoil_pickle(s, t / "l.pth", "transformer.h.2.attn.adapter_wte.weight",
                                                                torch.full((3, 64), NAN), wrapper="model"),
                          "l.pth", r"transformer.h.2.attn.adapter_wte.weight holds 192 non-finite"),
    "PEFT prompt NaN": ("peft", lambda s, t: spoil_peft(s, t / "p", PEFT_PROMPT, torch.full((1, 3, 64), NAN)),
                        "p/adapter_model.safetensors", f"{PEFT_PROMPT} holds 192 non-finite"),
    "PEFT adapter_len a string": ("peft", lambda s, t: spoil_peft(s, t / "p", adapter_len="3"),
                                  "p/adapter_config.json", "'adapter_len' must be a positive integer, found \"3\""),
    "PEFT adapter_layers a boolean": ("peft", lambda s, t: spoil_peft(s, t / "p", adapter_layers=True),
                                      "p/adapter_config.json", "'adapter_layers' must be a positive integer, found true"),
}


@pytest.mark.parametrize("case", FOREIGN)
def test_bad_foreign_adapter_is_one_line_naming_file_and_key(made, model, tmp_path, capsys, case):
    """The importers follow the same rules: a NaN/inf or integer prompt or gate in an official, litgpt or PEFT file,
    or a PEFT config field of the wrong type, is one line naming the file and key or field, from import_adapter and
    from `mm-adapter convert` (exit 2, no output written, no input changed)."""
    source, spoil, named, pattern = FOREIGN[case]
    bad = spoil(made[source], tmp_path)
    before = snapshot(tmp_path)
    message = refuses(lambda: import_adapter(model, source, bad), tmp_path / named, pattern)
    err = command_refuses(["convert", "--from", source, "--base", made["base"], bad, tmp_path / "out.safetensors"],
                          capsys, tmp_path / named, pattern)
    assert err == f"error: {message}\n"
    assert snapshot(tmp_path) == before and not (tmp_path / "out.safetensors").exists()
