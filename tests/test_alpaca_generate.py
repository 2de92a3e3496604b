"""The generate job (``mm-adapter generate``): the chosen adapter's streamed answer to the training prompt, adapter
switching in an interactive session, and clear one-line refusals otherwise."""

from __future__ import annotations

import pytest
import torch

from mm_adapter import AdapterConfig, MMAdapterError, attach_adapter, load_adapter, load_base, save_adapter
from mm_adapter.data.alpaca import prompt_text
from mm_adapter.inference.config import SamplingConfig
from mm_adapter.inference.generate import generate_text
from mm_adapter.jobs.configs.answering import GenerateConfig
from mm_adapter.jobs.generate import empty_answer_note, generate
from mm_adapter.model.config import ModelOptions
from tiny import tiny_model
from tiny_text import command_here, one_thread, tiny_base_folder  # noqa: F401 (autouse fixture)

GREEDY = SamplingConfig(max_new_tokens=6, temperature=0)


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


def expected_answer(base, adapter, instruction: str, input: str = "") -> str:
    """The adapter's greedy continuation of the Alpaca prompt (with BOS), computed directly."""
    model, tokenizer = load_base(str(base))
    load_adapter(model, adapter)
    return generate_text(model, tokenizer, prompt_text(tokenizer, instruction, input), GREEDY,
                         add_special_tokens=False)


def config(base, paths, **fields) -> GenerateConfig:
    return GenerateConfig(adapter=[str(p) for p in paths], model=ModelOptions(base=str(base)), sampling=GREEDY,
                          **fields)


def test_use_selects_adapter_and_streams_its_greedy_answer(base_and_adapters, capsys):
    """--use beta among two: the answer, and the text streamed to stdout, is beta's greedy continuation of the
    Alpaca prompt (with BOS); the flags of `mm-adapter generate` give the same text."""
    base, (alpha, beta) = base_and_adapters
    capsys.readouterr()
    result = generate(config(base, [alpha, beta], use="beta", instruction="What colour is the ?", input="sky"))
    streamed = capsys.readouterr().out
    expected = expected_answer(base, beta, "What colour is the ?", "sky")
    assert expected.strip() and result.answers == [expected] and result.adapters == ["beta"]
    assert streamed.strip() == expected.strip()
    assert expected != expected_answer(base, alpha, "What colour is the ?", "sky")  # the choice matters
    code, out, _ = command_here(["generate", "--base", str(base), "--adapter", str(alpha), str(beta), "--use", "beta",
                                 "--instruction", "What colour is the ?", "--input", "sky",
                                 "--temperature", "0", "--max-new-tokens", "6"], capsys)
    assert code == 0 and out.strip() == expected.strip()


def test_interactive_session_switches_adapter_with_use(base_and_adapters, capsys):
    """One instruction per line; ':use NAME' switches adapter without reloading; an unknown name is one error
    line and the session goes on with the current adapter."""
    base, (alpha, beta) = base_and_adapters
    lines = ["What colour is the sky ?\n", ":use alpha\n", "What colour is the sky ?\n", ":use gamma\n", "\n",
             "What colour is the sky ?\n"]
    result = generate(config(base, [alpha, beta], use="beta"), lines=lines)
    err = capsys.readouterr().err
    assert result.adapters == ["beta", "alpha", "alpha"]
    assert result.answers[0] == expected_answer(base, beta, "What colour is the sky ?")
    assert result.answers[1] == result.answers[2] == expected_answer(base, alpha, "What colour is the sky ?")
    assert "error: --use gamma: no such adapter (known: alpha, beta)" in err


@pytest.mark.parametrize("extra, message", [
    ({}, "2 adapters given; choose one with --use (alpha, beta)"),
    ({"use": "gamma"}, "--use gamma: no such adapter (known: alpha, beta)"),
])
def test_ambiguous_or_unknown_choice_is_one_line(base_and_adapters, capsys, extra, message):
    """Two adapters and no --use, or an unknown name: the job refuses, the command prints it as one line, exit 2."""
    base, paths = base_and_adapters
    with pytest.raises(MMAdapterError) as error:
        generate(config(base, paths, instruction="x", **extra))
    assert str(error.value) == message
    flags = ["--use", extra["use"]] if extra else []
    code, out, err = command_here(["generate", "--base", str(base), "--adapter", *map(str, paths),
                                   "--instruction", "x", *flags], capsys)
    assert code == 2 and err.strip().splitlines()[-1] == f"error: {message}" and out == ""


def test_adapter_for_another_base_is_refused(base_and_adapters, tmp_path, capsys):
    """An adapter trained on different base weights is refused before any generation."""
    base, (alpha, _) = base_and_adapters
    other = tiny_model("llama-gqa", seed=7, vocab_size=58, max_position_embeddings=512)
    attach_adapter(other, AdapterConfig(adapter_len=4, adapter_layers=2))
    foreign = save_adapter(other, tmp_path / "foreign.safetensors")
    with pytest.raises(MMAdapterError, match="foreign.safetensors: made for LlamaForCausalLM"):
        generate(config(base, [alpha, foreign], use="alpha", instruction="x"))
    code, out, err = command_here(["generate", "--base", str(base), "--adapter", str(alpha), str(foreign),
                                   "--use", "alpha", "--instruction", "x"], capsys)
    assert code == 2 and "foreign.safetensors: made for LlamaForCausalLM" in err and out == ""


def test_decoding_is_greedy_unless_a_temperature_is_asked_for(base_and_adapters, capsys):
    """The default answer is the greedy one, whatever the seed (the original's temperature 0.1 gave a different
    answer, often an empty one, from seed to seed); --temperature above 0 samples."""
    assert SamplingConfig().generate_kwargs()["do_sample"] is False
    assert SamplingConfig(temperature=0.7).generate_kwargs()["do_sample"] is True
    base, (alpha, _) = base_and_adapters
    expected = expected_answer(base, alpha, "What colour is the sky ?")
    argv = ["generate", "--base", str(base), "--adapter", str(alpha), "--instruction", "What colour is the sky ?",
            "--max-new-tokens", "6"]
    for seed in ("0", "1", "2"):
        code, out, err = command_here([*argv, "--seed", seed], capsys)
        assert code == 0 and out.strip() == expected.strip(), (seed, out)
        assert "precision: base weights float32, bf16 autocast off" in err, err  # said at the start


def test_an_empty_answer_is_never_printed_without_a_note(tmp_path, capsys):
    """A model whose every step picks a token with no text (here: a zeroed LM head, so <pad> wins each step) answers
    nothing; the command says so on stderr instead of printing a silent blank line."""
    base = tiny_base_folder(tmp_path / "base")
    model, _ = load_base(str(base))
    with torch.no_grad():
        model.lm_head.weight.zero_()
    model.save_pretrained(base)
    code, out, err = command_here(["generate", "--base", str(base), "--instruction", "What colour is the sky ?",
                                   "--max-new-tokens", "3"], capsys)
    assert code == 0 and out.strip() == "", out
    assert "note: the answer is empty" in err and "--temperature 0.7" in err, err
    assert "another --seed, or --temperature 0 (greedy)" in empty_answer_note(SamplingConfig(temperature=0.5))
