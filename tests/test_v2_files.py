"""LLaMA-Adapter V2 files: a V2 file or folder records that it is V2, holds every bias, scale and norm, and loads back
to equal logits; a v1 file on a V2 model takes the V2 part off and v1 files stay v1; a damaged V2 file is one line
naming the file and what is wrong; a V2 file is not exported to PEFT, which would drop its biases, scales and norms."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from mm_adapter import AdapterConfig, attach_adapter, load_adapter, save_adapter
from mm_adapter.errors import MMAdapterError
from mm_adapter.model.adapter import adapter_v2_config, count_trainable
from mm_adapter.model.adapter_file import V2_KEY, read_adapter
from mm_adapter.model.config import AdapterV2Config
from mm_adapter.pretrained import from_pretrained, save_pretrained
from tiny import left_padded_batch, logits, randomise_adapter, randomise_v2, tiny_model, v2_model


@pytest.mark.parametrize("family", ["llama-gqa", "qwen2-gqa"])
def test_save_and_load_round_trip(tmp_path, family):
    """A V2 file records that it is V2 and holds every bias, scale and norm; loading it on a fresh base gives equal
    logits; a folder (save_pretrained / from_pretrained) too, counting the V2 tensors as trainable."""
    model = randomise_v2(randomise_adapter(v2_model(family)))
    ids, mask, positions = left_padded_batch()
    trained = logits(model, ids, mask, positions)
    path = save_adapter(model, tmp_path / "v2.safetensors")
    found = read_adapter(path)
    assert found.v2 == AdapterV2Config() and len(found.v2_tensors) == 4 * 7 * 2 + 9
    assert V2_KEY not in found.extra_metadata and not found.extra_tensors
    fresh = tiny_model(family)
    load_adapter(fresh, path)
    assert torch.equal(logits(fresh, ids, mask, positions), trained)
    folder = save_pretrained(model, tmp_path / "folder")
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["adapter_v2"] == {"targets": "all", "train_norms": True, "fusion_layers": 1}
    assert config["trainable_parameters"]["total"] == count_trainable(model)
    again = from_pretrained(tiny_model(family), folder)
    assert torch.equal(logits(again, ids, mask, positions), trained)


def test_v1_file_on_a_v2_model_replaces_it_and_v1_files_stay_v1(tmp_path):
    """Loading a v1 file where a V2 adapter is attached takes the V2 part off (norms restored): the logits are the
    v1 adapter's alone; a v1 file reads as v1 (no adapter_v2)."""
    v1 = randomise_adapter(tiny_model("llama-gqa"))
    attach_adapter(v1, AdapterConfig(adapter_len=3, adapter_layers=2))
    randomise_adapter(v1)
    path = save_adapter(v1, tmp_path / "v1.safetensors")
    assert read_adapter(path).v2 is None and read_adapter(path).v2_tensors == {}
    ids, mask, positions = left_padded_batch()
    model = randomise_v2(v2_model("llama-gqa"))
    load_adapter(model, path)
    assert adapter_v2_config(model) is None
    assert torch.equal(logits(model, ids, mask, positions), logits(v1, ids, mask, positions))


def rewritten(path, out, tensors=None, metadata=None):
    """``path``'s file with its tensors or metadata changed (a hand-edited or damaged V2 file)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        meta = dict(handle.metadata())
    save_file(tensors if tensors is not None else load_file(str(path)), str(out), metadata={**meta, **(metadata or {})})
    return out


@pytest.mark.parametrize("damage,message", [
    ("missing", r"missing tensor adapter_v2\.model\.layers\.0\.self_attn\.q_proj\.bias \(an adapter V2 file"),
    ("shape", r"adapter_v2\.model\.layers\.0\.self_attn\.q_proj\.bias has shape \[3\], expected \[64\]"),
    ("unknown", r"tensor adapter_v2\.model\.layers\.9\.mlp\.up_proj\.bias is no part of this base's adapter V2"),
    ("nan", r"adapter_v2\.model\.norm\.weight"),
    ("config", r"adapter V2 config targets: names no module"),
    ("field", r"unknown adapter V2 config field\(s\) rank"),
])
def test_a_damaged_v2_file_is_one_line(tmp_path, damage, message):
    path = save_adapter(v2_model("llama-gqa"), tmp_path / "v2.safetensors")
    tensors = load_file(str(path))
    key = "adapter_v2.model.layers.0.self_attn.q_proj.bias"
    metadata = None
    if damage == "missing":
        del tensors[key]
    elif damage == "shape":
        tensors[key] = torch.zeros(3)
    elif damage == "unknown":
        tensors["adapter_v2.model.layers.9.mlp.up_proj.bias"] = torch.zeros(96)
    elif damage == "nan":
        tensors["adapter_v2.model.norm.weight"][0] = float("nan")
    elif damage == "config":
        metadata = {V2_KEY: json.dumps({"targets": ",", "train_norms": True})}
    else:
        metadata = {V2_KEY: json.dumps({"targets": "all", "train_norms": True, "rank": 4})}
    bad = rewritten(path, tmp_path / "bad.safetensors", tensors, metadata)
    with pytest.raises(MMAdapterError) as caught:
        load_adapter(tiny_model("llama-gqa"), bad)
    text = str(caught.value)
    assert text.startswith(str(bad)) and "\n" not in text
    assert __import__("re").search(message, text), text


def test_a_v2_file_is_not_exported_to_peft(tmp_path):
    """PEFT's adaption prompt holds prompts and gates only: converting a V2 file to it would drop the biases, scales
    and norms silently, so it is one line naming the file, and nothing is written."""
    from mm_adapter.interop import convert

    path = save_adapter(v2_model("llama-gqa", gate_granularity="layer"), tmp_path / "v2.safetensors")
    with pytest.raises(MMAdapterError, match=r"v2\.safetensors: a LLaMA-Adapter V2 file \(biases, scales, norms\); "
                                             r"PEFT's adaption prompt holds prompts and gates only"):
        convert(tiny_model("llama-gqa"), "ours", path, "peft", tmp_path / "peft")
    assert not (tmp_path / "peft").exists()
