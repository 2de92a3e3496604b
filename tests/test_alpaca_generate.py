"""scripts/generate.py: the chosen adapter's streamed answer to the training prompt; clear refusals otherwise."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from tiny import tiny_model
from tiny_text import REPO, one_thread, tiny_base_folder  # noqa: F401 (autouse fixture)

from mm_adapter import AdapterConfig, attach_adapter, load_adapter, load_base, save_adapter
from mm_adapter.alpaca import prompt_text
from mm_adapter.generate import SamplingConfig, generate_text


def run_generate(argv: list[str], capsys) -> tuple[int, str, str]:
    spec = importlib.util.spec_from_file_location("generate_script", REPO / "scripts" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit:
        module.run(module.main, argv)
    captured = capsys.readouterr()
    return exit.value.code, captured.out, captured.err


@pytest.fixture(scope="module")
def base_and_adapters(tmp_path_factory):
    folder = tmp_path_factory.mktemp("generate")
    base = tiny_base_folder(folder / "base")
    model, _ = load_base(str(base))
    attach_adapter(model, AdapterConfig(adapter_len=4, adapter_layers=2))
    paths = []
    for name, seed in (("alpha", 1), ("beta", 2)):
        torch.manual_seed(seed)
        with torch.no_grad():
            for layer in model.model.layers[2:]:
                layer.self_attn.adapter.prompt.normal_(0, 2.0)
                layer.self_attn.adapter.gate.uniform_(0.5, 1.5)
        paths.append(save_adapter(model, folder / f"{name}.safetensors"))
    return base, paths


def test_use_selects_adapter_and_streams_its_greedy_answer(base_and_adapters, capsys):
    """--use beta among two: the printed text is beta's greedy continuation of the Alpaca prompt (with BOS)."""
    base, (alpha, beta) = base_and_adapters
    code, out, _ = run_generate(["--base", str(base), "--adapter", str(alpha), str(beta), "--use", "beta",
                                 "--instruction", "What colour is the ?", "--input", "sky",
                                 "--temperature", "0", "--max-new-tokens", "6"], capsys)
    assert code == 0
    model, tokenizer = load_base(str(base))
    load_adapter(model, beta)
    expected = generate_text(model, tokenizer, prompt_text(tokenizer, "What colour is the ?", "sky"),
                             SamplingConfig(max_new_tokens=6, temperature=0), add_special_tokens=False)
    assert expected.strip() and out.strip() == expected.strip()


@pytest.mark.parametrize("extra, message", [
    ([], "2 adapters given; choose one with --use (alpha, beta)"),
    (["--use", "gamma"], "--use gamma: no such adapter (known: alpha, beta)"),
])
def test_ambiguous_or_unknown_choice_is_one_line(base_and_adapters, capsys, extra, message):
    base, paths = base_and_adapters
    code, _, err = run_generate(["--base", str(base), "--adapter", *map(str, paths), "--instruction", "x", *extra],
                                capsys)
    assert code == 2 and err.strip().splitlines()[-1] == f"error: {message}"


def test_adapter_for_another_base_is_refused(base_and_adapters, tmp_path, capsys):
    """An adapter trained on different base weights is refused before any generation."""
    base, (alpha, _) = base_and_adapters
    other = tiny_model("llama-gqa", seed=7, vocab_size=58, max_position_embeddings=512)
    attach_adapter(other, AdapterConfig(adapter_len=4, adapter_layers=2))
    foreign = save_adapter(other, tmp_path / "foreign.safetensors")
    code, out, err = run_generate(["--base", str(base), "--adapter", str(alpha), str(foreign), "--use", "alpha",
                                   "--instruction", "x"], capsys)
    assert code == 2 and "foreign.safetensors: made for LlamaForCausalLM" in err and out == ""
