"""LLaMA-Adapter V2 (--method llama-adapter-v2): zero-init identity, parity with the explicit formula (bias and scale
on the linear layers, trained norms, prompts and gates), what trains, file round trips, the bad-input lines."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from mm_adapter import AdapterConfig, adapter_parameters, attach_adapter, detach_adapter, load_adapter, save_adapter
from mm_adapter.errors import ConfigError, MMAdapterError
from mm_adapter.methods.attach import attach_method
from mm_adapter.methods.config import TuningConfig
from mm_adapter.model.adapter import adapter_v2_config, count_trainable
from mm_adapter.model.adapter_file import V2_KEY, read_adapter
from mm_adapter.model.config import AdapterV2Config
from mm_adapter.pretrained import from_pretrained, save_pretrained
from mm_adapter.training.config import TrainConfig
from mm_adapter.training.trainer import build_optimizer
from reference import reference_logits
from tiny import left_padded_batch, randomise_adapter, tiny_model

V2_FAMILIES = ["llama-mha", "llama-gqa", "qwen2-gqa"]
ATTENTION_AND_MLP = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def logits(model, ids, mask, positions):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=positions).logits


def v2_model(family="llama-gqa", v2=None, attn="sdpa", **adapter):
    model = tiny_model(family, attn_implementation=attn)
    attach_adapter(model, AdapterConfig(**{"adapter_len": 3, "adapter_layers": 2, **adapter}), v2 or AdapterV2Config())
    return model


def randomise_v2(model, seed=5):
    """Non-trivial biases (N(0, 0.1)), scales (1 + N(0, 0.1)) and norm weights (1 + N(0, 0.1)): with b = 0, s = 1 the
    V2 path would be invisible."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if not parameter.requires_grad or name.endswith((".prompt", ".gate")):
                continue
            base = 0.0 if name.endswith(".bias") else 1.0
            parameter.copy_(base + 0.1 * torch.randn(parameter.shape, generator=generator))
    return model


def bias_scale(model) -> dict:
    """{linear module: (b, s)} as the reference takes it, read off the modules that have a V2 child."""
    return {module: (module.adapter.bias.detach(), module.adapter.scale.detach())
            for module in model.modules() if isinstance(module, torch.nn.Linear) and hasattr(module, "adapter")}


@pytest.mark.parametrize("family", V2_FAMILIES)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_fresh_v2_adapter_is_exactly_the_base_model(family, attn):
    """b = 0, s = 1, gates 0, norms as they were: the logits are the base's bit for bit."""
    model = tiny_model(family, attn_implementation=attn)
    ids, mask, positions = left_padded_batch()
    base = logits(model, ids, mask, positions)
    attach_adapter(model, AdapterConfig(adapter_len=3, adapter_layers=3), AdapterV2Config())
    assert torch.equal(logits(model, ids, mask, positions), base)


@pytest.mark.parametrize("family", ["llama-gqa", "qwen2-gqa"])
def test_on_a_bf16_base_the_trained_norms_are_fp32_and_the_forward_stays_bf16(family):
    """As the trainer builds it on a bf16 base (autocast), the V2 parameters are fp32 master weights; a fresh adapter
    still gives the base's bf16 logits exactly, outside autocast (validation, generation) as well as inside."""
    model = tiny_model(family).to(torch.bfloat16)
    ids, mask, positions = left_padded_batch()
    base = logits(model, ids, mask, positions)
    tuned = attach_method(model, TuningConfig(method="llama-adapter-v2"), AdapterConfig(adapter_len=3,
                                                                                         adapter_layers=2))
    assert {p.dtype for p in tuned.model.parameters() if p.requires_grad} == {torch.float32}
    assert torch.equal(logits(model, ids, mask, positions), base)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(logits(model, ids, mask, positions), base)


@pytest.mark.parametrize("family", V2_FAMILIES)
@pytest.mark.parametrize("targets", ["all", "q_proj,v_proj,down_proj"])
def test_parity_with_explicit_formula(family, targets):
    """Random prompts, gates, biases, scales and norm weights: our logits equal tests/reference.py's forward with
    ``y = s * (W x + b)`` on exactly the target layers (prompt keys/values included) and the trained norms."""
    model = v2_model(family, AdapterV2Config(targets=targets), adapter_layers=3)
    randomise_adapter(model)
    randomise_v2(model)
    ids, mask, positions = left_padded_batch()
    ours = logits(model, ids, mask, positions)
    params = {i: {k: p.detach() for k, p in entry.items()} for i, entry in adapter_parameters(model).items()}
    wanted = ATTENTION_AND_MLP if targets == "all" else tuple(targets.split(","))
    adapted = bias_scale(model)
    assert sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if m in adapted}) == sorted(wanted)
    assert len(adapted) == 4 * len(wanted)  # every decoder layer, not only the prompted ones
    with torch.no_grad():
        expected = reference_logits(model, ids, mask, positions, params, bias_scale=adapted)
        without = reference_logits(model, ids, mask, positions, params)
    real = mask.bool()
    torch.testing.assert_close(ours[real], expected[real], atol=2e-5, rtol=1e-4)
    assert (ours[real] - without[real]).abs().max() > 1e-2  # the bias/scale part is far beyond the tolerance


def test_trained_norms_enter_the_forward_and_detach_restores_the_base():
    """A changed norm weight changes the logits (the norms are the base's own modules), and detach gives the base
    its norms back: the base function exactly again."""
    model = tiny_model("qwen2-gqa")
    ids, mask, positions = left_padded_batch()
    base = logits(model, ids, mask, positions)
    attach_adapter(model, AdapterConfig(adapter_len=3, adapter_layers=2), AdapterV2Config())
    with torch.no_grad():
        model.model.norm.weight.mul_(1.5)
    assert not torch.equal(logits(model, ids, mask, positions), base)
    detach_adapter(model)
    assert torch.equal(logits(model, ids, mask, positions), base)
    assert not any(p.requires_grad for p in model.parameters())
    assert not any(hasattr(m, "adapter") for m in model.modules())


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


# ----- bad input: one line naming the flag, field, file or tensor -------------------------------------------------

@pytest.mark.parametrize("options,message", [
    (dict(method="lora", v2_targets="q_proj"), "v2_targets: applies to --method llama-adapter-v2, not lora"),
    (dict(v2_norms=False), "v2_norms: applies to --method llama-adapter-v2, not llama-adapter"),
    (dict(method="llama-adapter-v2", v2_targets=" , "), "v2_targets: names no module"),
    (dict(method="llama-adapter-v2", lora_rank=2), "lora_rank: applies to --method lora, not llama-adapter-v2"),
])
def test_v2_options_are_checked_in_one_line(options, message):
    with pytest.raises(ConfigError) as caught:
        TuningConfig(**options)
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("command,flags,line", [
    (["train", "alpaca", "--data", "d.json"], ["--v2-targets", "q_proj"],
     "error: --v2-targets: applies to --method llama-adapter-v2, not llama-adapter"),
    (["train", "scienceqa", "--data", "d"], ["--method", "lora", "--v2-norms", "false"],
     "error: --v2-norms: applies to --method llama-adapter-v2, not lora"),
    (["train", "scienceqa", "--data", "d"], ["--method", "llama-adapter-v2", "--v2-targets", ","],
     "error: --v2-targets: names no module; give all or a comma list such as q_proj,v_proj"),
    (["train", "scienceqa", "--data", "d"], ["--method", "llama-adapter-v2", "--v2-fusion-layers", "0"],
     "error: --v2-fusion-layers: must be >= 1, got 0"),
    (["train", "scienceqa", "--data", "d"], ["--method", "llama-adapter-v2", "--v2-disjoint", "true"],
     "error: --v2-disjoint: splits the parameters between problems with and without an image; it applies with "
     "--images"),
    (["train", "alpaca", "--data", "d.json"], ["--method", "llama-adapter-v2", "--v2-disjoint", "false"],
     "error: --v2-disjoint: splits the parameters between problems with and without an image; train alpaca has no "
     "images"),
    (["train", "scienceqa", "--data", "d"], ["--method", "lora", "--images"],
     "error: --images: adds image features to the adaption prompts of --method llama-adapter or llama-adapter-v2; "
     "lora has none"),
])
def test_bad_v2_flags_are_one_line_and_exit_2_before_any_work(tmp_path, capsys, command, flags, line):
    from tiny_text import command_here

    code, out, err = command_here([*command, "--out", str(tmp_path / "out"), *flags], capsys)
    assert (code, err.strip()) == (2, line) and not (tmp_path / "out").exists()


def test_more_fusion_layers_than_adapted_layers_is_one_line():
    with pytest.raises(MMAdapterError, match=r"^adapter V2 fusion_layers=3 \(--v2-fusion-layers\) but only "
                                             r"adapter_layers=2 layers are adapted$"):
        v2_model("llama-gqa", AdapterV2Config(fusion_layers=3), adapter_layers=2)


def test_a_target_the_base_lacks_is_one_line():
    with pytest.raises(MMAdapterError, match=r"^adapter V2 target 'qkv' \(--v2-targets\) is no linear layer of this "
                                             r"base's decoder layers; they have down_proj, gate_proj, k_proj, o_proj, "
                                             r"q_proj, up_proj, v_proj \(or give all\)$"):
        v2_model("llama-gqa", AdapterV2Config(targets="q_proj,qkv"))


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


# ----- training: both commands take --method llama-adapter-v2 ------------------------------------------------------

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


# ----- early fusion: images reach the prompts of the early adapted layers only ---------------------------------------

@pytest.mark.parametrize("fusion", [1, 2])
def test_early_fusion_adds_the_visual_offset_to_the_early_adapted_layers_only(fusion):
    """With a per-row visual offset (what the projection makes of an image), the logits equal the explicit formula
    whose prompts are prompt + offset in the bottom ``fusion`` adapted layers and the plain prompts above; adding it
    to every adapted layer (v1's fusion) would give other logits."""
    from mm_adapter.model.adapter import prompt_offset

    model = randomise_v2(randomise_adapter(v2_model("qwen2-gqa", AdapterV2Config(fusion_layers=fusion),
                                                    adapter_layers=3)))
    ids, mask, positions = left_padded_batch(lengths=(9,))
    offset = torch.randn(1, 64, generator=torch.Generator().manual_seed(9))
    with prompt_offset(model, offset):
        ours = logits(model, ids, mask, positions)
    params = {i: {k: p.detach() for k, p in entry.items()} for i, entry in adapter_parameters(model).items()}
    early = sorted(params)[:fusion]
    fused = {i: {**entry, "prompt": entry["prompt"] + offset[0] if i in early else entry["prompt"]}
             for i, entry in params.items()}
    everywhere = {i: {**entry, "prompt": entry["prompt"] + offset[0]} for i, entry in params.items()}
    with torch.no_grad():
        expected = reference_logits(model, ids, mask, positions, fused, bias_scale=bias_scale(model))
        v1_fusion = reference_logits(model, ids, mask, positions, everywhere, bias_scale=bias_scale(model))
    torch.testing.assert_close(ours, expected, atol=2e-5, rtol=1e-4)
    assert (ours - v1_fusion).abs().max() > 1e-2


def test_a_v2_file_is_not_exported_to_peft(tmp_path):
    """PEFT's adaption prompt holds prompts and gates only: converting a V2 file to it would drop the biases, scales
    and norms silently, so it is one line naming the file, and nothing is written."""
    from mm_adapter.interop import convert

    path = save_adapter(v2_model("llama-gqa", gate_granularity="layer"), tmp_path / "v2.safetensors")
    with pytest.raises(MMAdapterError, match=r"v2\.safetensors: a LLaMA-Adapter V2 file \(biases, scales, norms\); "
                                             r"PEFT's adaption prompt holds prompts and gates only"):
        convert(tiny_model("llama-gqa"), "ours", path, "peft", tmp_path / "peft")
    assert not (tmp_path / "peft").exists()


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
