"""Checkpoints from strangers: a pickle that would run code is refused, by every reader, and the code never runs."""

import json
import os
import pickle
import re
from pathlib import Path

import pytest
import torch

from mm_adapter import MMAdapterError, load_base
from mm_adapter.files.safe_load import load_torch_file
from mm_adapter.interop import import_adapter
from tiny import tiny_model

REPO = Path(__file__).resolve().parents[1]


class Payload:
    """Unpickling this calls ``os.system("touch <sentinel>")``."""

    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return os.system, (f"touch {self.sentinel}",)


def malicious(path: Path, sentinel: Path, legacy: bool = False) -> Path:
    """A checkpoint that looks like an adapter but carries the payload next to real tensors."""
    state = {"adapter_query.weight": torch.zeros(6, 64), "layers.3.attention.gate": Payload(sentinel)}
    path.parent.mkdir(parents=True, exist_ok=True)
    if legacy:
        path.write_bytes(pickle.dumps(state, protocol=2))  # the pre-zip pickle format
    else:
        torch.save(state, path)
    return path


def test_the_payload_really_runs_when_unpickled_unsafely(tmp_path):
    """Guard for the tests below: without weights_only the sentinel does appear."""
    sentinel = tmp_path / "SENTINEL"
    torch.load(malicious(tmp_path / "x.pth", sentinel), weights_only=False)
    assert sentinel.exists()


@pytest.mark.parametrize("legacy, says", [
    (False, r"adapter.pth: refused to load: it contains objects other than tensors, which could run code"),
    (True, r"adapter.pth: is a plain Python pickle \(pickle.dump\), not a torch checkpoint .*refused: loading a "
           r"pickle can run code")])
def test_load_torch_file_refuses_in_one_line_without_running_code(tmp_path, legacy, says):
    """load_torch_file refuses a zip or plain pickle carrying a payload, in one line naming the file (and saying
    what a plain pickle is), before the payload runs."""
    sentinel = tmp_path / "SENTINEL"
    path = malicious(tmp_path / "adapter.pth", sentinel, legacy=legacy)
    with pytest.raises(MMAdapterError, match=says) as error:
        load_torch_file(path)
    assert "\n" not in str(error.value)
    assert not sentinel.exists()


def test_every_importer_refuses_the_payload(tmp_path):
    """Every reader of foreign checkpoints (official, litgpt, PEFT adapters; Meta-format bases) refuses the payload
    and never runs it."""
    sentinel = tmp_path / "SENTINEL"
    model = tiny_model("llama-mha")
    peft_folder = tmp_path / "peft"
    malicious(peft_folder / "adapter_model.bin", sentinel)
    (peft_folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "ADAPTION_PROMPT", "adapter_len": 3, "adapter_layers": 2, "target_modules": "self_attn"}))
    sources = {"official": malicious(tmp_path / "release.pth", sentinel),
               "litgpt": malicious(tmp_path / "lit_model.pth.adapter", sentinel), "peft": peft_folder}
    for source, path in sources.items():
        with pytest.raises(MMAdapterError, match="refused to load"):
            import_adapter(model, source, path)
    meta = tmp_path / "meta"
    malicious(meta / "consolidated.00.pth", sentinel)
    (meta / "params.json").write_text(json.dumps({"dim": 64, "n_layers": 4, "n_heads": 4, "norm_eps": 1e-5}))
    with pytest.raises(MMAdapterError, match="refused to load"):
        load_base(str(meta))
    assert not sentinel.exists()


def test_no_reader_bypasses_load_torch_file():
    """Every pickle read in the project's code goes through safe_load (weights_only=True): the installed package
    (mm_adapter, with the scienceqa/ and eval/ folders it installs as mm_adapter.scienceqa and mm_adapter.eval)
    and the benchmarks."""
    unsafe = re.compile(r"torch\.load\(|pickle\.loads?\(|weights_only\s*=\s*False|torch\.jit\.load\(")
    offenders = []
    for folder in ("mm_adapter", "scienceqa", "eval", "bench"):
        sources = sorted((REPO / folder).rglob("*.py"))
        assert len(sources) > 1, f"{folder}/: no sources found; is the scan list out of date?"
        for path in sources:
            if path.name == "safe_load.py":
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if unsafe.search(line):
                    offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert offenders == []
