"""``mm-adapter convert --to merged``: a LLaMA-Adapter V2 adapter exported as a plain transformers model folder (bias,
scale and trained norms merged into the base) plus our prompt adapter; plain transformers loads it with no mm-adapter
code, and with the prompt adapter attached it gives the V2 model's logits; what cannot be exported is one line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from test_v2_merge import TOLERANCE
from transformers import AutoModelForCausalLM

from mm_adapter import attach_adapter, load_adapter, load_base, save_adapter
from mm_adapter.cli import main
from mm_adapter.interop.merged import PROMPT_ADAPTER
from mm_adapter.model.config import AdapterConfig, AdapterV2Config
from tiny import randomise_adapter, randomise_v2, tiny_model
from tiny_text import tiny_base_folder, tiny_tokenizer

IDS = torch.tensor([[3, 9, 4, 17, 8, 22, 5, 11]])

PLAIN_LOAD = """
import sys, torch
from transformers import AutoModelForCausalLM
model, info = AutoModelForCausalLM.from_pretrained(sys.argv[1], output_loading_info=True)
assert not any(info.values()), info  # no missing, unexpected or mismatched weights
assert not [name for name in sys.modules if name.startswith("mm_adapter")]
with torch.no_grad():
    torch.save(model(input_ids=torch.tensor(IDS)).logits, sys.argv[2])
""".replace("IDS", str(IDS.tolist()))


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def qwen2_base_folder(folder):
    """A tiny Qwen2 (its q/k/v have a bias, o_proj and the MLP none) with the tiny tokenizer."""
    tokenizer = tiny_tokenizer()
    tiny_model("qwen2-gqa", vocab_size=len(tokenizer), initializer_range=0.2).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def v2_file(base, path, targets="all"):
    """A V2 adapter with random non-trivial prompts, gates, biases, scales and norms; returns (path, its logits)."""
    model, _ = load_base(str(base), dtype="fp32")
    attach_adapter(model, AdapterConfig(adapter_len=3, adapter_layers=2), AdapterV2Config(targets=targets))
    randomise_v2(randomise_adapter(model))
    save_adapter(model, path)
    return path, logits(model)


def run_convert(*args, capsys):
    capsys.readouterr()
    code = main(["convert", *(str(arg) for arg in args)])
    return code, capsys.readouterr()


@pytest.mark.parametrize("family,targets", [("llama", "all"), ("qwen2", "q_proj,k_proj,v_proj")])
def test_merged_folder_loads_plain_and_with_the_prompt_adapter_gives_the_v2_logits(family, targets, tmp_path,
                                                                                   capsys):
    """Llama (no biases: the export turns attention_bias/mlp_bias on) and Qwen2 (its own q/k/v biases): the folder
    loads with plain transformers in a process without mm-adapter, every weight accounted for, and computes what it
    does here; with prompt_adapter.safetensors (prompts and gates only) it gives the V2 model's logits."""
    base = (tiny_base_folder if family == "llama" else qwen2_base_folder)(tmp_path / "base")
    adapter, expected = v2_file(base, tmp_path / "v2.safetensors", targets)
    out = tmp_path / "merged"
    code, printed = run_convert("--to", "merged", "--base", base, adapter, out, capsys=capsys)
    assert (code, printed.out, printed.err) == (0, f"wrote {out}\n", "")
    assert {"config.json", "model.safetensors", "tokenizer.json", PROMPT_ADAPTER} <= {p.name for p in out.iterdir()}
    subprocess.run([sys.executable, "-c", PLAIN_LOAD, str(out), str(tmp_path / "plain.pt")], check=True)
    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    assert torch.equal(logits(plain), torch.load(tmp_path / "plain.pt"))
    assert not torch.allclose(logits(plain), logits(AutoModelForCausalLM.from_pretrained(base)))  # V2 is in there
    if family == "llama":
        assert json.loads((out / "config.json").read_text())["attention_bias"] is True
    prompts = load_adapter(plain, out / PROMPT_ADAPTER)
    assert prompts.v2 is None and prompts.v2_tensors == {}
    torch.testing.assert_close(logits(plain), expected, **TOLERANCE)


@pytest.mark.parametrize("make,match", [
    ("v1", "v1.safetensors: no LLaMA-Adapter V2 part (bias/scale) to merge"),
    ("qwen2-all", "model.layers.0.self_attn.o_proj: a qwen2 model has no bias there"),
    ("official", "--to merged: INPUT must be our adapter (--from ours or folder), not --from official")])
def test_what_cannot_be_merged_is_one_line_exit_2_and_nothing_written(make, match, tmp_path, capsys):
    """A v1 adapter (no V2 part), a V2 bias on a layer the architecture has no bias for (Qwen2's o_proj), a foreign
    format: one line naming it, exit 2, no OUTPUT."""
    extra = []
    if make == "v1":
        base = tiny_base_folder(tmp_path / "base")
        model, _ = load_base(str(base))
        adapter = save_adapter(randomise_adapter(attach_adapter(model, AdapterConfig(adapter_len=3, adapter_layers=2))),
                               tmp_path / "v1.safetensors")
    elif make == "qwen2-all":
        base = qwen2_base_folder(tmp_path / "base")
        adapter, _ = v2_file(base, tmp_path / "v2.safetensors")
    else:
        base = tiny_base_folder(tmp_path / "base")
        adapter = tmp_path / "release.pth"
        torch.save({}, adapter)
        extra = ["--from", "official"]
    code, printed = run_convert("--to", "merged", *extra, "--base", base, adapter, tmp_path / "out", capsys=capsys)
    assert code == 2 and printed.out == ""
    assert printed.err.count("\n") == 1 and match in printed.err
    assert not (tmp_path / "out").exists()
