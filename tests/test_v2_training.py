"""Training LLaMA-Adapter V2: exactly the V2 parameters train (prompts, gates, the targets' biases and scales, the
norms) and the optimizer holds exactly those; --method llama-adapter-v2 reports its sizes and trainable count; train
alpaca lowers the loss and its run folder loads back; a killed run resumes to the same adapter bit for bit and a resume
with other V2 settings is refused; --v2-disjoint routes image rows and text rows to their own parameters, and is
refused on several processes before any work."""

from __future__ import annotations

import json

import pytest
import torch

from mm_adapter import AdapterConfig
from mm_adapter.errors import MMAdapterError
from mm_adapter.methods.attach import attach_method
from mm_adapter.methods.config import TuningConfig
from mm_adapter.model.adapter import adapter_v2_config, count_trainable
from mm_adapter.model.adapter_file import read_adapter
from mm_adapter.model.config import AdapterV2Config
from mm_adapter.training.config import TrainConfig
from mm_adapter.training.trainer import build_optimizer
from tiny import ATTENTION_AND_MLP, left_padded_batch, randomise_adapter, randomise_v2, tiny_model, v2_model


def expected_trainable(model, targets, norms: bool) -> set[str]:
    names = {n for n in dict(model.named_parameters()) if n.endswith((".prompt", ".gate"))}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets and ".layers." in name:
            names |= {f"{name}.adapter.bias", f"{name}.adapter.scale"}
        if norms and "Norm" in type(module).__name__:
            names.add(f"{name}.weight")
    return names


@pytest.mark.parametrize("v2,targets,norms", [
    (AdapterV2Config(), ATTENTION_AND_MLP, True),
    (AdapterV2Config(targets="v_proj, o_proj", train_norms=False), ("v_proj", "o_proj"), False)])
def test_only_the_v2_parameters_train(v2, targets, norms):
    """requires_grad is set on prompts, gates, the targets' biases and scales and (if asked) every norm weight, nothing
    else; the optimizer holds exactly those, prompts with weight decay, the 1-D rest without; after a backward no
    frozen weight has a gradient and every V2 parameter has one."""
    model = v2_model("llama-gqa", v2)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == expected_trainable(model, targets, norms)
    assert count_trainable(model) == sum(p.numel() for n, p in model.named_parameters() if n in trainable)
    optimizer = build_optimizer(model, TrainConfig(weight_decay=0.02), lr=1e-3)
    by_id = {id(p): n for n, p in model.named_parameters()}
    groups = [{by_id[id(p)] for p in group["params"]} for group in optimizer.param_groups]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.02, 0.0]
    assert groups[0] == {n for n in trainable if n.endswith(".prompt")} and groups[0] | groups[1] == trainable
    ids, mask, positions = left_padded_batch()
    model(input_ids=ids, attention_mask=mask, position_ids=positions).logits.sum().backward()
    for name, parameter in model.named_parameters():
        if name in trainable and not name.endswith(".prompt"):  # prompts see no gradient through zero gates
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        elif name not in trainable:
            assert parameter.grad is None, name


def test_attach_method_trains_v2_with_its_sizes_and_count(tmp_path):
    """--method llama-adapter-v2 builds ours plus V2 on the base; its sizes say so (for run.json and resume) and its
    count is prompts + gates + 2 x the targets' outputs per layer + the norm weights."""
    model = tiny_model("llama-gqa")
    tuned = attach_method(model, TuningConfig(method="llama-adapter-v2", v2_targets="q_proj,down_proj"),
                          AdapterConfig(adapter_len=3, adapter_layers=2), autocast=False)
    assert tuned.sizes == {"adapter_len": 3, "adapter_layers": 2, "v2_targets": "q_proj,down_proj", "v2_norms": True,
                           "v2_fusion_layers": 1}
    assert adapter_v2_config(tuned.model) == AdapterV2Config(targets="q_proj,down_proj")
    prompts = 2 * (3 * 64 + 4)
    assert tuned.trainable == prompts + 4 * 2 * (64 + 64) + (2 * 4 + 1) * 64
    assert tuned.identity() == {"method": "llama-adapter-v2", "method_sizes": tuned.sizes}


def test_train_alpaca_v2_lowers_the_loss_and_its_run_folder_loads_back(tmp_path, capsys):
    """`mm-adapter train alpaca --method llama-adapter-v2` lowers the training loss (last steps against the first),
    writes a V2 adapter file and a run.json naming the method, its sizes and its trainable count; `generate` takes the
    run folder, and the one loader puts the V2 adapter (config and values) on a fresh base."""
    from mm_adapter.inference.loading import load_answering
    from mm_adapter.methods.run_record import read_run_record
    from mm_adapter.pretrained import locate_adapter
    from tiny_text import arguments, command_here, records, tiny_base_folder, write_records

    base = tiny_base_folder(tmp_path / "base")
    data = write_records(tmp_path / "data.json", records(32))
    run = tmp_path / "run"
    argv = [arg if arg != "2" else "6" for arg in arguments(base, data, run)]  # 6 epochs of 8 steps
    code, out, err = command_here(["train", "alpaca", *argv, "--method", "llama-adapter-v2",
                                   "--v2-targets", "q_proj,v_proj,o_proj,down_proj"], capsys)
    assert code == 0, err
    assert "method llama-adapter-v2 (adapter_len 4, adapter_layers 3, v2_targets q_proj,v_proj,o_proj,down_proj, " \
           "v2_norms True, v2_fusion_layers 1)" in out
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 48 and sum(losses[-8:]) / 8 < sum(losses[:8]) / 8 - 1.0, losses
    record = read_run_record(run)
    assert record["method"] == "llama-adapter-v2" and record["sizes"]["v2_targets"] == "q_proj,v_proj,o_proj,down_proj"
    saved = read_adapter(run / "adapter.safetensors")
    assert saved.v2 == AdapterV2Config(targets="q_proj,v_proj,o_proj,down_proj")
    assert record["costs"]["trainable"] == 3 * (4 * 64 + 4) + 4 * 2 * (64 + 32 + 64 + 64) + 9 * 64
    method, path = locate_adapter(run)
    model, _, _ = load_answering(str(base), method, path, "cpu", "fp32")
    assert adapter_v2_config(model) == saved.v2
    live = dict(model.named_parameters())
    assert all(torch.equal(live[name.removeprefix("adapter_v2.").replace(".bias", ".adapter.bias")
                                .replace(".scale", ".adapter.scale")], tensor)
               for name, tensor in saved.v2_tensors.items())
    assert any(not torch.equal(t, torch.zeros_like(t)) for n, t in saved.v2_tensors.items() if n.endswith(".bias"))
    code, out, err = command_here(["generate", "--base", str(base), "--adapter", str(run), "--instruction",
                                   "What colour is the sky ?", "--max-new-tokens", "4", "--threads", "1"], capsys)
    assert code == 0, err


def test_a_killed_v2_run_resumes_to_the_same_adapter_and_refuses_other_v2_settings(tmp_path, capsys):
    """SIGKILL after step 5 (checkpoint at 3), then --resume: prompts, gates, biases, scales and norms bit-identical
    to the uninterrupted run (the norms and V2 tensors are in the checkpoint and the optimizer state); a resume with
    other --v2-targets is one line, exit 2."""
    import signal

    from test_train_resume import finetune
    from tiny_text import arguments, command_here, records, tiny_base_folder, write_records

    from mm_adapter.training.process import KILL_ENV

    base = tiny_base_folder(tmp_path / "base")
    data = write_records(tmp_path / "data.json", records(40))
    v2 = ["--method", "llama-adapter-v2", "--v2-targets", "v_proj,up_proj"]
    code, _, err = command_here(["train", "alpaca", *arguments(base, data, tmp_path / "whole", *v2)], capsys)
    assert code == 0, err
    killed = finetune(base, data, tmp_path / "killed", *v2, env={KILL_ENV: "5"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    code, _, err = command_here(["train", "alpaca", *arguments(base, data, tmp_path / "killed", *v2[:2],
                                                             "--v2-targets", "v_proj", "--resume")], capsys)
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: "), err
    assert 'method_sizes.v2_targets: checkpoint "v_proj,up_proj", now "v_proj"' in err, err
    code, _, err = command_here(["train", "alpaca", *arguments(base, data, tmp_path / "killed", *v2, "--resume")],
                                capsys)
    assert code == 0, err
    whole, resumed = (read_adapter(tmp_path / name / "adapter.safetensors") for name in ("whole", "killed"))
    assert whole.v2_tensors.keys() == resumed.v2_tensors.keys() and len(whole.v2_tensors) == 4 * 2 * 2 + 9
    assert all(torch.equal(tensor, resumed.v2_tensors[name]) for name, tensor in whole.v2_tensors.items())
    assert all(torch.equal(whole.layers[i][k], resumed.layers[i][k]) for i in whole.layers for k in ("prompt", "gate"))


def test_disjoint_parameters_route_image_rows_and_text_rows_to_their_own_groups():
    """V2's joint training with disjoint parameters: the loss is the plain multimodal loss, but rows with an image
    send gradient only to the projection and the early layers' prompts and gates, rows without one only to the
    rest (late prompts and gates, biases, scales, norms); afterwards every parameter trains again."""
    from mm_adapter.encoders.config import VisualConfig
    from mm_adapter.encoders.projection import VisualProjection
    from mm_adapter.training.multimodal import attach_projection, disjoint_loss, multimodal_loss, visual_parameters

    model = randomise_v2(randomise_adapter(v2_model("llama-gqa", AdapterV2Config(fusion_layers=1), adapter_layers=3)))
    torch.manual_seed(0)
    attach_projection(model, VisualProjection(32, 64, VisualConfig(visual_zero_init=False)))
    ids, mask, _ = left_padded_batch(lengths=(12, 9, 7, 10))
    batch = {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100),
             "image_features": torch.randn(4, 32, generator=torch.Generator().manual_seed(2)),
             "image_mask": torch.tensor([True, False, True, False])}
    visual = {id(p) for p in visual_parameters(model)}
    early = model.model.layers[1].self_attn.adapter
    assert {id(early.prompt), id(early.gate)} <= visual and id(model.model.layers[2].self_attn.adapter.gate) not in visual
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    torch.testing.assert_close(disjoint_loss(model, batch), multimodal_loss(model, batch), atol=1e-4, rtol=1e-5)
    for rows, moved in (([0, 2], visual), ([1, 3], set(map(id, trainable.values())) - visual)):
        model.zero_grad(set_to_none=True)
        disjoint_loss(model, {key: value[rows] for key, value in batch.items()}).backward()
        for name, parameter in trainable.items():
            got = parameter.grad is not None and parameter.grad.abs().sum() > 0
            assert got == (id(parameter) in moved), (rows, name)
    assert all(p.requires_grad for p in trainable.values())


def test_disjoint_parameters_on_several_processes_are_refused_before_any_work(tmp_path, monkeypatch):
    """DistributedDataParallel syncs every parameter's gradient each step; a rank whose rows all have images gives
    the language group none. So --v2-disjoint with a world size over 1 is one line, and nothing is written."""
    from mm_adapter.data.config import ScienceQASource
    from mm_adapter.jobs import train_scienceqa as job
    from mm_adapter.jobs.configs.training import TrainScienceQAConfig
    from mm_adapter.training.process import DistInfo

    (tmp_path / "data").mkdir()
    for name in ("problems.json", "pid_splits.json"):
        (tmp_path / "data" / name).write_text("{}")
    monkeypatch.setattr(job, "setup_distributed", lambda device: DistInfo(0, 2, torch.device("cpu")))
    config = TrainScienceQAConfig(out=str(tmp_path / "out"), source=ScienceQASource(data=str(tmp_path / "data")),
                                  images=True, tuning=TuningConfig(method="llama-adapter-v2"))
    with pytest.raises(MMAdapterError, match=r"^--v2-disjoint trains some parameters on only some rows, which "
                                             r"DistributedDataParallel does not sync; train on one process or pass "
                                             r"--v2-disjoint false$"):
        job.train_scienceqa(config)
    assert not (tmp_path / "out").exists()
