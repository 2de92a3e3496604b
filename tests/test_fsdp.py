"""--strategy fsdp on CPU with gloo: a tiny base sharded over two processes, against one process.

Everything the FSDP path uses runs on CPU with gloo in torch 2.14: ``fully_shard`` on the meta device and its
all-gathers (fp32 and bf16), ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)``, activation
checkpointing inside sharded layers, loading each process's rows from safetensors, the adapter's gradient
all-reduce, SIGKILL and exact resume (the launches of the training job: tests/test_distributed.py). Nothing is
reduce-scattered (no sharded parameter has a gradient), so no test is skipped. GPU memory, NCCL and speed are
bench/fsdp_check.py's, on a machine with GPUs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from test_distributed import GLOO, held, torchrun

from mm_adapter import AdapterConfig, TrainConfig, attach_adapter
from mm_adapter.data.alpaca import AlpacaRecord, encode_alpaca
from mm_adapter.errors import MMAdapterError
from mm_adapter.model.adapter import decoder_layers
from mm_adapter.training.base_loading import (
    SOURCE_ATTR, choose_strategy, hub_folder, load_training_base, shard_rows, shard_source,
)
from mm_adapter.training.batches import PadCollator
from mm_adapter.training.process import DistInfo
from mm_adapter.training.trainer import train
from tiny import tiny_model
from tiny_text import (
    REPO, arguments, command_here, one_thread, records, tiny_base_folder, tiny_tokenizer, write_records,
)

# Tolerances of bench/fsdp_check.py's comparison: the largest gradient difference, as a fraction of the largest
# gradient, and the loss's relative difference. Observed here: fp32 6e-8 (the two sides sum the global batch in
# different orders), bf16 and mixed 3e-3 (losses equal).
TOLERANCE = {"fp32-ac": 1e-5, "mixed": 2e-2, "bf16": 2e-2}
GATHERED = {"fp32-ac": "torch.float32", "mixed": "torch.bfloat16", "bf16": "torch.bfloat16"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fsdp")
    return tiny_base_folder(folder / "base"), write_records(folder / "data.json", records(40))


@GLOO
def test_a_sharded_step_matches_one_process(tiny_run):
    """Loss and every adapter gradient of one step with the base sharded over 2 gloo processes equal one process's
    with the whole base (within TOLERANCE): fp32 with activation checkpointing; bf16 (a bf16 base under autocast);
    mixed (fp32 weights that FSDP's bf16 MixedPrecisionPolicy gathers as bf16 copies: the layers compute in bf16,
    as one process does with a bf16 copy of the base). Each process read exactly half of the base."""
    base, _ = tiny_run
    run = torchrun("-m", "bench.fsdp_check", "--base", str(base), "--variants", ",".join(TOLERANCE), "--seq", "16",
                   "--adapter-len", "4", "--adapter-layers", "3")
    assert run.returncode == 0, run.stderr[-3000:]
    rows = {row["variant"]: row for row in map(json.loads, filter(lambda line: line.startswith("{"),
                                                                   run.stdout.splitlines()))}
    assert rows.keys() == TOLERANCE.keys()
    for variant, row in rows.items():
        assert row["ok"] and row["grad_max_abs"] > 0.01 and row["gathered_dtype"] == GATHERED[variant], row
        assert row["grad_max_abs_diff"] <= TOLERANCE[variant] * row["grad_max_abs"], row
        assert row["loss_rel_diff"] <= TOLERANCE[variant], row
    assert held(run.stdout) == 3 * [(65_440, 130_880)]


def test_fsdp_without_a_distributed_launch_is_one_line(tiny_run, tmp_path, capsys):
    """--strategy fsdp in one process (WORLD_SIZE unset) exits 2 with one line, from the command in this process and
    from a real one, and leaves no output folder."""
    base, data = tiny_run
    argv = ["train", "alpaca", *arguments(base, data, tmp_path / "out", "--strategy", "fsdp")]
    line = ("error: --strategy fsdp splits the base over the processes of a distributed launch, but this run is one "
            "process (WORLD_SIZE unset or 1); launch it with torchrun --nproc_per_node N (N >= 2), or use --strategy "
            "ddp\n")
    assert command_here(argv, capsys)[::2] == (2, line)
    environment = {key: value for key, value in os.environ.items() if key != "WORLD_SIZE"}
    real = subprocess.run([sys.executable, "-m", "mm_adapter", *argv], capture_output=True, text=True, cwd=REPO,
                          env={**environment, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert (real.returncode, real.stderr) == (2, line)
    assert not (tmp_path / "out").exists()


def _bin_only(folder):
    """A transformers folder whose weights are a PyTorch pickle only."""
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama", "num_hidden_layers": 4}')
    (folder / "pytorch_model.bin").write_bytes(b"not read")
    return folder


@pytest.mark.parametrize("case", ["gguf", "meta", "not a model", "bin only", "missing"])
def test_fsdp_refuses_a_base_it_cannot_load_a_part_at_a_time(tiny_run, tmp_path, capsys, case):
    """fsdp reads each process's rows from safetensors files: a GGUF file, a Meta-format folder, a folder without
    config.json, .bin-only weights or a missing folder is one line and exit 2, before the launch check."""
    _, data = tiny_run
    meta = tmp_path / "meta"
    meta.mkdir()
    (meta / "params.json").write_text("{}")
    base, why = {"gguf": (tmp_path / "m.gguf", "is a GGUF file"), "meta": (meta, "is a Meta-format folder"),
                 "not a model": (tmp_path, "is not a transformers model folder (no config.json)"),
                 "bin only": (_bin_only(tmp_path / "bin"), "has no model.safetensors"),
                 "missing": (tmp_path / "nowhere", "no such model folder")}[case]
    code, _, err = command_here(["train", "alpaca", *arguments(base, data, tmp_path / "out", "--strategy", "fsdp")],
                                capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: --strategy fsdp: ") and why in err, err
    assert "fsdp reads each process's part of the base from safetensors files" in err


def test_a_hub_id_that_cannot_be_fetched_is_one_line(monkeypatch):
    """A hub id fsdp cannot fetch (offline, not cached) is one line naming it."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MMAdapterError, match=r"^could not fetch 'nobody-here/no-such-model' for sharded loading"):
        hub_folder("nobody-here/no-such-model")


def test_auto_picks_fsdp_for_a_base_over_half_a_device():
    """auto: fsdp when several processes share the run and the bf16 weights exceed half of one device, else ddp."""
    gib = 2**30
    assert choose_strategy(8, 130 * gib, 80 * gib) == "fsdp"
    assert choose_strategy(2, 41 * gib, 80 * gib) == "fsdp"
    assert choose_strategy(8, 14 * gib, 80 * gib) == "ddp"
    assert choose_strategy(1, 130 * gib, 80 * gib) == "ddp"


@pytest.mark.parametrize("device_gib", [1e-4, 1.0])
def test_auto_shards_a_base_over_half_a_device_under_a_launch(tiny_run, monkeypatch, device_gib):
    """Under a 2-process launch, auto builds the tiny base (0.25 MB in bf16) hollow, to be sharded, when one device
    has less than twice that (here 0.1 MB), and loads it whole otherwise."""
    import mm_adapter.training.base_loading as sharded_load

    monkeypatch.setattr(sharded_load, "setup_distributed", lambda device: DistInfo(0, 2, torch.device("cpu")))
    monkeypatch.setattr(sharded_load, "device_memory", lambda device: int(device_gib * 2**30))
    model, _ = load_training_base(str(tiny_run[0]), "fp32", TrainConfig())
    assert (shard_source(model) is not None) == (device_gib < 1)


def test_auto_in_one_process_loads_the_base_whole(tiny_run):
    """Without a launch, auto is ddp: the base comes back loaded (real weights), not hollow."""
    model, _ = load_training_base(str(tiny_run[0]), "fp32", TrainConfig())
    assert shard_source(model) is None and model.get_input_embeddings().weight.abs().sum() > 0


def test_row_blocks_are_fsdp2s():
    """The rows each process reads are torch.chunk's blocks, which FSDP2 keeps (short or empty last blocks)."""
    for rows, world in [(58, 2), (58, 4), (3, 8), (10, 3)]:
        chunks = torch.arange(rows).chunk(world)
        for rank in range(world):
            start, stop = shard_rows(rows, rank, world)
            expected = chunks[rank].tolist() if rank < len(chunks) else []
            assert list(range(start, stop)) == expected


@pytest.fixture
def tiny_setup():
    tokenizer = tiny_tokenizer()
    examples, _ = encode_alpaca(tokenizer, [AlpacaRecord(**r) for r in records(8)], 512)
    return examples, PadCollator(tokenizer.pad_token_id)


def _adapted():
    model = tiny_model("llama-gqa", vocab_size=len(tiny_tokenizer()), max_position_embeddings=512,
                       initializer_range=0.2)
    torch.manual_seed(0)
    return attach_adapter(model, AdapterConfig(adapter_len=4, adapter_layers=2))


def _config(**overrides) -> TrainConfig:
    settings = {"epochs": 1, "warmup_epochs": 0, "batch_size": 4, "lr": 3e-2, "bf16": False, "progress": False}
    return TrainConfig(**{**settings, **overrides})


def test_activation_checkpointing_recomputes_the_adapted_layers_only(tiny_setup, tmp_path):
    """--activation-checkpointing runs each adapted layer's forward again in the backward (the lower, unadapted
    layer once: the backward stops at the lowest adapted layer), and trains to the same adapter."""
    examples, collate = tiny_setup
    calls, adapters = {}, {}
    for checkpointing in (False, True):
        model, seen = _adapted(), []
        for index, layer in enumerate(decoder_layers(model)):
            layer.mlp.register_forward_pre_hook(lambda *_, index=index, seen=seen: seen.append(index))
        train(model, examples, _config(activation_checkpointing=checkpointing), collate, tmp_path / str(checkpointing))
        calls[checkpointing] = [seen.count(index) for index in range(4)]
        adapters[checkpointing] = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    assert calls == {False: [2, 2, 2, 2], True: [2, 2, 4, 4]}  # 2 micro-batches; layers 2-3 adapted
    assert all(torch.equal(a, b) for a, b in zip(adapters[False], adapters[True]))


def test_fsdp_refuses_a_model_loaded_whole_and_validation(tiny_setup, tmp_path):
    """The trainer shards only a hollow base from load_training_base; and under fsdp it refuses validation during
    training (ScienceQA's: rank 0 alone would save best.safetensors from a sharded base), before any loading."""
    examples, collate = tiny_setup
    with pytest.raises(MMAdapterError, match="strategy fsdp shards a base built by load_training_base"):
        train(_adapted(), examples, _config(strategy="fsdp"), collate, tmp_path / "whole")
    hollow = _adapted()
    setattr(hollow, SOURCE_ATTR, object())
    with pytest.raises(MMAdapterError, match="validation during training .* is not supported yet"):
        train(hollow, examples, _config(), collate, tmp_path / "validated", on_step_end=lambda *_: None)


def test_strategy_takes_three_values(tiny_run, tmp_path, capsys):
    """--strategy is auto, ddp or fsdp; anything else is one line naming the choices."""
    base, data = tiny_run
    code, _, err = command_here(["train", "alpaca", *arguments(base, data, tmp_path / "out", "--strategy", "zero3")],
                                capsys)
    assert code == 2 and err.count("\n") == 1 and "--strategy" in err and "auto" in err and "fsdp" in err, err
