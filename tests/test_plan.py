"""`mm-adapter plan`: counts on the meta device for LLaMA-7B and 65B shapes, the memory formulas against what
autograd really keeps, recipe spellings, local configs and data, and one-line refusals. No weights anywhere."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from mm_adapter import AdapterConfig, VisualConfig, attach_adapter
from mm_adapter.jobs.configs.plan import PlanConfig
from mm_adapter.jobs.plan import find_recipe, plan
from mm_adapter.model import attention
from mm_adapter.training import memory_plan as model_plan
from tiny_text import command_here, records, tiny_base_folder, write_records


def test_llama7b_alpaca_plan_counts_the_papers_adapter():
    """The 7B recipe's trainable count is the paper's 1.2M: 30 layers x (10 prompts x 4096 + 32 gates)."""
    result = plan(PlanConfig("llama7b-alpaca"))
    assert result.counts.trainable == 30 * (10 * 4096 + 32) == 1_229_760
    assert result.counts.frozen == 6_738_415_616  # LLaMA-7B with its untied LM head
    assert result.data.records == 52_002 and result.data.tokens == 52_002 * 512 and not result.data.exact


def test_llama65b_shapes_count_ten_prompts_on_all_80_layers():
    """65B, 10 x 80: 80 layers x (10 x 8192 + 64 gates) = 80 x 81,984 = 6,558,720, built on the meta device."""
    config = model_plan.architecture("huggyllama/llama-65b").config
    counts = model_plan.count_parameters(config, AdapterConfig(adapter_len=10, adapter_layers=80))
    assert counts.adapter == 80 * (10 * 8192 + 64) == 6_558_720
    assert 65.2e9 < counts.frozen < 65.3e9


def test_scienceqa_recipe_adds_the_vitl14_projection_to_reach_1_8m():
    """ViT-L-14 at 4 depths into LLaMA-7B: projection 536,640, adapter 1,229,760, 1,766,400 (~1.8M) in all."""
    result = plan(PlanConfig("llama7b-scienceqa-vitl14"))
    assert (result.counts.adapter, result.counts.visual) == (1_229_760, 536_640)
    assert result.counts.trainable == 1_766_400
    assert result.counts.encoder == 303_966_208  # ViT-L-14's image tower, frozen, on the device during training


def test_the_vit_formula_counts_the_tower_open_clip_builds():
    """The frozen encoder's count comes from a formula (no weights built); it must equal a real tower's."""
    from mm_adapter.encoders.clip import TINY_VIT, build_encoder, clip_model_config

    config = clip_model_config(TINY_VIT)
    built = build_encoder(VisualConfig(clip_model=TINY_VIT, clip_layers=2))
    expected = sum(p.numel() for p in built.visual.parameters())
    assert model_plan.vit_parameters({**config["vision_cfg"], "embed_dim": config["embed_dim"]}) == expected


def _saved_bytes(model, ids) -> int:
    """Bytes autograd keeps for the backward of one forward, parameters excluded (each storage once)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor):
        pointer = tensor.untyped_storage().data_ptr()
        if pointer not in params:
            seen[pointer] = tensor.untyped_storage().nbytes()
        return tensor

    embeds = model.get_input_embeddings()(ids).detach().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), torch.autocast("cpu", torch.bfloat16):
        model.model(inputs_embeds=embeds, use_cache=False)
    return sum(seen.values())


def test_activation_formula_matches_what_autograd_keeps_per_adapted_layer(monkeypatch):
    """18 H + 6 I + 12 heads len bytes per token per adapted layer (bf16): the plan's activation term is measured,
    not guessed. LLaMA-7B's MLP ratio; GPU kernels (the CPU-only fp32 token-block copies switched off)."""
    monkeypatch.setattr(attention, "train_token_block_in_fp32", lambda *tensors: False)
    adapter = AdapterConfig(adapter_len=10, adapter_layers=2)
    ids = torch.randint(0, 64, (2, 64), generator=torch.Generator().manual_seed(0))

    shape = dict(hidden_size=256, intermediate_size=688, num_attention_heads=2, num_key_value_heads=2,
                 vocab_size=64, max_position_embeddings=64)

    def measured(layers: int) -> int:
        model = LlamaForCausalLM(LlamaConfig(num_hidden_layers=layers, **shape)).to(torch.bfloat16)
        attach_adapter(model.requires_grad_(False).train(), AdapterConfig(adapter_len=10, adapter_layers=layers))
        return _saved_bytes(model, ids)

    per_token = (measured(4) - measured(2)) / 2 / ids.numel()
    expected = model_plan.activation_bytes_per_token(LlamaConfig(**shape), adapter)
    assert per_token == pytest.approx(expected, rel=0.02)


def _run(**changes) -> model_plan.RunShape:
    shape = dict(batch=4, seq_len=512, weight_dtype="bf16", autocast=True, sharded=False, checkpointing=False)
    return model_plan.RunShape(**{**shape, **changes})


def test_fsdp_shards_weights_and_ddp_needs_one_gpu_that_holds_everything():
    """Under fsdp the weights per GPU fall with the GPU count and more GPUs make 65B fit; under ddp they never do."""
    config = model_plan.architecture("llama-65b").config
    adapter = AdapterConfig(adapter_len=10, adapter_layers=80)
    counts = model_plan.count_parameters(config, adapter)
    memory = lambda gpus, run: model_plan.total(model_plan.memory_per_gpu(config, adapter, counts, run, gpus))
    weights = lambda gpus: model_plan.memory_per_gpu(config, adapter, counts, _run(sharded=True), gpus)[0].bytes
    assert weights(8) == pytest.approx(weights(1) / 8) == pytest.approx(counts.frozen * 2 / 8)
    eighty = 80 * model_plan.GIB
    assert model_plan.gpus_needed(lambda n: memory(n, _run()), eighty, sharded=False) is None
    needed = model_plan.gpus_needed(lambda n: memory(n, _run(sharded=True, checkpointing=True)), eighty, sharded=True)
    assert needed is not None and 2 <= needed <= 4
    assert memory(needed - 1, _run(sharded=True, checkpointing=True)) > eighty
    assert memory(1, _run(checkpointing=True)) < memory(1, _run())  # checkpointing keeps one input per layer


@pytest.mark.parametrize("name", ["llama7b-alpaca", "alpaca-llama7b", "alpaca-llama7b.yaml"])
def test_a_recipe_is_found_by_either_spelling(name):
    """`plan` takes the model-first spelling of the issue and the file name --config uses."""
    assert find_recipe(name).name == "alpaca-llama7b.yaml"
    assert find_recipe("llama7b-scienceqa-vitl14").name == "scienceqa-llama7b-vitl14.yaml"


def test_a_local_config_and_local_data_are_read_instead_of_the_table(tmp_path):
    """A base folder's config.json sets the shape; local data with a local tokenizer gives exact token counts."""
    base = tiny_base_folder(tmp_path / "base")
    data = write_records(tmp_path / "data.json", records(6))
    recipe = tmp_path / "alpaca-tiny.yaml"
    recipe.write_text(f"data: {data}\nmax_seq_len: 64\nmodel:\n  base: {base}\nadapter:\n  adapter_len: 4\n"
                      "  adapter_layers: 3\n")
    result = plan(PlanConfig(str(recipe), gpus=1))
    heads = json.loads((base / "config.json").read_text())["num_attention_heads"]
    assert result.counts.adapter == 3 * (4 * 64 + heads)
    assert result.data.records == 6 and result.data.exact and 6 < result.data.tokens < 6 * 64


def test_the_command_prints_counts_memory_and_gpus_needed(capsys):
    """`mm-adapter plan llama7b-alpaca` prints the 1,229,760 and each memory term, exit 0."""
    code, out, err = command_here(["plan", "llama7b-alpaca", "--gpus", "8", "--gpu-memory", "80"], capsys)
    assert code == 0, err
    assert "trainable 1,229,760" in out and "frozen 6,738,415,616" in out
    for term in ("weights", "optimizer state", "activations", "total", "GPUs of 80 GiB needed: 1"):
        assert term in out


@pytest.mark.parametrize("base, message", [
    ("/no/such/folder/mymodel", "not an architecture of the table"),
    ("org/not-cached-model", "not an architecture of the table"),
])
def test_an_unknown_architecture_without_config_is_one_line_exit_2(tmp_path, capsys, base, message):
    """A base plan cannot shape (no config.json, no params.json, not in the table): one line naming it, exit 2."""
    recipe = tmp_path / "alpaca-x.yaml"
    recipe.write_text(f"model:\n  base: {base}\n")
    code, _, err = command_here(["plan", str(recipe)], capsys)
    assert code == 2 and err.count("\n") == 1 and message in err and base in err, err


def test_meta_folders_plan_by_name_where_absent_and_by_params_json_where_present(tmp_path):
    """Plan needs no weights: Meta's folder name /data/llama/7B is the 7B shape even where it is absent, and a
    Meta folder that is there is matched to the table by its params.json (width and depth)."""
    assert model_plan.architecture("/data/llama/7B").config.hidden_size == 4096
    assert model_plan.table_name("huggyllama/llama-30b") == "llama-33b"
    assert model_plan.table_name("meta-llama/Llama-2-7b-hf") is None
    folder = tmp_path / "my-llama"
    folder.mkdir()
    (folder / "params.json").write_text(json.dumps({"dim": 8192, "n_layers": 80, "n_heads": 64, "norm_eps": 1e-5,
                                                    "multiple_of": 256, "vocab_size": -1}))
    found = model_plan.architecture(str(folder))
    assert found.config.intermediate_size == 22016 and "params.json" in found.source


def test_an_unknown_or_ambiguous_recipe_name_is_one_line_exit_2(capsys):
    """A recipe name that matches nothing lists the recipes; one matching two commands asks for the full name."""
    code, _, err = command_here(["plan", "no-such-recipe"], capsys)
    assert code == 2 and "alpaca-llama7b" in err and err.count("\n") == 1
    code, _, err = command_here(["plan", "smollm2-cpu"], capsys)
    assert code == 2 and "ambiguous" in err
