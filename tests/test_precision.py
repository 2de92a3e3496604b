"""Frozen linear weights cast to bf16 once for an evaluation under bf16 autocast: the answers are bit-identical to
autocast casting them at every call, and the model is given back exactly as it was (same parameters, ties intact)."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from mm_adapter import AdapterConfig, attach_adapter
from mm_adapter.eval.run import EvalConfig, answer_batch, batch_plan, evaluate, run
from mm_adapter.inference.precision import frozen_linear_weights_in_bf16, precision
from test_eval_run import PROBLEMS, make_tokenizer
from tiny import randomise_adapter, tiny_model


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def _adapted(tokenizer):
    return randomise_adapter(attach_adapter(tiny_model("llama-gqa", vocab_size=len(tokenizer), seed=2,
                                                       tie_word_embeddings=True), AdapterConfig(adapter_len=3,
                                                                                                adapter_layers=2)))


def _lora(tokenizer):
    model = get_peft_model(tiny_model("qwen2-gqa", vocab_size=len(tokenizer), seed=2),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False))
    model.requires_grad_(False)
    return model


@pytest.mark.parametrize("build", [_adapted, _lora], ids=["llama-adapter-tied-head", "peft-lora-qwen2"])
@pytest.mark.parametrize("fmt", ["QCM-A", "QCM-T"])
def test_cast_once_gives_the_answers_autocast_gives(tokenizer, build, fmt):
    """evaluate (weights cast once) == every batch answered under plain autocast (weights cast at each call),
    bit for bit; the fp32 weights (the tied embedding too) are the same objects afterwards."""
    model = build(tokenizer)
    before = {name: p for name, p in model.named_parameters()}
    config = EvalConfig(format=fmt, bf16=True, batch_size=3)
    reference = {a.pid: a for batch in batch_plan(PROBLEMS, config)
                 for a in answer_batch(model, tokenizer, batch, config)}
    answers = evaluate(model, tokenizer, PROBLEMS, config)
    for pid, answer in answers.items():
        assert answer.probs == reference[pid].probs and answer.choice == reference[pid].choice
    assert {name: p for name, p in model.named_parameters()} == before
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_weights_are_bf16_inside_and_given_back_after_a_stopped_run(tokenizer, tmp_path):
    """Inside, every frozen fp32 linear weight is one bf16 copy (a tied head shares its embedding's copy, trainable
    weights stay); a run stopped after one batch gives the fp32 weights back."""
    model = _adapted(tokenizer)
    trainable = torch.nn.Linear(4, 4)
    model.extra = trainable
    with frozen_linear_weights_in_bf16(model):
        assert model.lm_head.weight.dtype == torch.bfloat16 and trainable.weight.dtype == torch.float32
        assert model.get_input_embeddings().weight.dtype == torch.float32  # the residual stream keeps fp32
    with frozen_linear_weights_in_bf16(model, enabled=False), precision(model, False):
        assert model.lm_head.weight.dtype == torch.float32
    run(model, tokenizer, PROBLEMS, tmp_path / "p.json", EvalConfig(bf16=True, batch_size=2), max_batches=1,
        progress=False)
    assert model.lm_head.weight.dtype == torch.float32
    assert model.lm_head.weight is model.get_input_embeddings().weight
