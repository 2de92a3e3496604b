"""--v2-head: LLaMA-Adapter V2's bias and scale on the output layer too, as litgpt's adapter_v2 trains them. A fresh
head adapter leaves the base's logits exactly; the head's bias and scale train and are saved, recorded in the run's
sizes (so a resume with other settings is refused) and load back; runs without the flag keep their old sizes; the
flag on another method is one line."""

from __future__ import annotations

import torch

from mm_adapter import AdapterConfig
from mm_adapter.methods.attach import attach_method
from mm_adapter.methods.config import TuningConfig
from mm_adapter.model.adapter import adapter_v2_config
from mm_adapter.model.adapter_file import read_adapter
from mm_adapter.model.config import AdapterV2Config
from tiny import left_padded_batch, tiny_model


def test_a_fresh_head_adapter_is_the_base_and_only_adds_the_heads_bias_and_scale():
    base = tiny_model("llama-gqa")
    ids, mask, positions = left_padded_batch(base.config.vocab_size)
    with torch.no_grad():
        expected = base(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    adapter = AdapterConfig(adapter_len=3, adapter_layers=2)
    without = attach_method(tiny_model("llama-gqa"), TuningConfig(method="llama-adapter-v2"), adapter, autocast=False)
    tuned = attach_method(tiny_model("llama-gqa"), TuningConfig(method="llama-adapter-v2", v2_head=True), adapter,
                          autocast=False)
    assert "v2_head" not in without.sizes and tuned.sizes["v2_head"] is True
    assert adapter_v2_config(tuned.model) == AdapterV2Config(head=True)
    head = tuned.model.get_output_embeddings()
    assert head.adapter.bias.requires_grad and head.adapter.scale.requires_grad
    assert tuned.trainable == without.trainable + 2 * head.out_features
    with torch.no_grad():
        got = tuned.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    assert torch.equal(got, expected)


def test_train_alpaca_with_v2_head_trains_and_saves_the_heads_bias_and_scale(tmp_path, capsys):
    from mm_adapter.inference.loading import load_answering
    from mm_adapter.pretrained import locate_adapter
    from tiny_text import arguments, command_here, records, tiny_base_folder, write_records

    base = tiny_base_folder(tmp_path / "base")
    data = write_records(tmp_path / "data.json", records(16))
    run = tmp_path / "run"
    code, out, err = command_here(["train", "alpaca", *arguments(base, data, run), "--method", "llama-adapter-v2",
                                   "--v2-head", "true", "--v2-targets", "q_proj"], capsys)
    assert code == 0, err
    assert "v2_fusion_layers 1, v2_head True)" in out
    saved = read_adapter(run / "adapter.safetensors")
    assert saved.v2.head
    head = {name: tensor for name, tensor in saved.v2_tensors.items() if "lm_head" in name}
    assert sorted(name.rsplit(".", 1)[1] for name in head) == ["bias", "scale"]
    assert all(not torch.equal(t, torch.zeros_like(t) if n.endswith("bias") else torch.ones_like(t))
               for n, t in head.items()), "the head's bias and scale did not train"
    model, _, _ = load_answering(str(base), *locate_adapter(run), "cpu", "fp32")
    live = model.get_output_embeddings().adapter
    assert torch.equal(live.bias.detach(), next(t for n, t in head.items() if n.endswith("bias")))
    code, _, err = command_here(["train", "alpaca", *arguments(base, data, run), "--method", "llama-adapter-v2",
                                 "--v2-targets", "q_proj"], capsys)
    assert code == 2 and "v2_head" in err and err.count("\n") == 1, err  # a resume without the head is refused


def test_v2_head_on_another_method_is_one_line(tmp_path, capsys):
    from tiny_text import command_here

    code, _, err = command_here(["train", "scienceqa", "--data", "d", "--out", str(tmp_path / "o"), "--method", "lora",
                                 "--v2-head", "true"], capsys)
    assert (code, err.strip()) == (2, "error: --v2-head: applies to --method llama-adapter-v2, not lora")
    assert not (tmp_path / "o").exists()
