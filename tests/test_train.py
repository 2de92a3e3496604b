"""The shared trainer, in process on a tiny Llama: loss, batching, schedule, optimizer, outputs and refusals."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mm_adapter import AdapterConfig, TrainConfig, attach_adapter, read_adapter
from mm_adapter.data.alpaca import AlpacaRecord, encode_alpaca
from mm_adapter.errors import ConfigError, MMAdapterError
from mm_adapter.training.batches import BatchPlan, PadCollator, epoch_batches, padded_tokens
from mm_adapter.training.metrics_log import MetricsLog
from mm_adapter.training.trainer import (
    TrainingDiverged, build_optimizer, effective_lr, evaluate_loss, lm_loss_sum, lr_factor, train,
)
from tiny import tiny_model
from tiny_text import one_thread, records, tiny_tokenizer  # noqa: F401 (autouse fixture)


@pytest.fixture
def setup():
    tokenizer = tiny_tokenizer()
    examples, _ = encode_alpaca(tokenizer, [AlpacaRecord(**r) for r in records(48)], 512)
    model = tiny_model("llama-gqa", vocab_size=len(tokenizer), max_position_embeddings=512, initializer_range=0.2)
    torch.manual_seed(0)
    attach_adapter(model, AdapterConfig(adapter_len=4, adapter_layers=4))
    return model, examples, PadCollator(tokenizer.pad_token_id)


def config(**overrides) -> TrainConfig:
    base = dict(epochs=2, warmup_epochs=0.5, batch_size=4, lr=3e-2, bf16=False,
                progress=False, checkpoint_every=4)
    return TrainConfig(**{**base, **overrides})


def test_labelled_rows_only_loss_equals_full_logits_loss(setup):
    """The LM head on labelled rows only gives transformers' own shifted loss (right padding included)."""
    model, examples, collate = setup
    batch = collate(examples[:5])
    with torch.no_grad():
        ours = lm_loss_sum(model, batch)
        reference = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          labels=batch["labels"]).loss
    count = (batch["labels"][:, 1:] != -100).sum()
    torch.testing.assert_close(ours / count, reference, rtol=1e-5, atol=1e-6)


def test_batch_plan_covers_each_example_once_with_little_padding():
    """Every example once per epoch; length grouping pads far less than random batches; same seed, same plan."""
    lengths = [int(x) for x in torch.randint(5, 300, (400,), generator=torch.Generator().manual_seed(0))]
    batches = epoch_batches(lengths, 4, seed=1, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(400))
    assert batches == epoch_batches(lengths, 4, seed=1, epoch=0) != epoch_batches(lengths, 4, seed=1, epoch=1)
    random_batches = [list(range(i, min(i + 4, 400))) for i in range(0, 400, 4)]
    assert padded_tokens(lengths, batches) < 0.8 * padded_tokens(lengths, random_batches)
    assert padded_tokens(lengths, batches) < 1.1 * sum(lengths)


def test_batch_plan_is_the_same_stream_for_any_world_size():
    """Two ranks x 1 micro-batch see exactly the micro-batches one process sees with 2 accumulation steps."""
    lengths = list(range(10, 60))
    single = BatchPlan(lengths, 3, seed=0, epochs=3, world_size=1, accum_steps=2)
    double = BatchPlan(lengths, 3, seed=0, epochs=3, world_size=2, accum_steps=1)
    assert single.total_steps == double.total_steps == 3 * 17 // 2
    for step in range(single.total_steps):
        assert single.rank_batches(step, 0) == double.rank_batches(step, 0) + double.rank_batches(step, 1)


def test_schedule_warms_up_linearly_then_half_cosine():
    """Linear warmup to the full lr, then a strictly falling half cosine ending at min_lr."""
    factors = [lr_factor(s, warmup_steps=4, total_steps=12, min_ratio=0.1) for s in range(12)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == 1.0 and all(a > b for a, b in zip(factors[4:], factors[5:]))
    assert math.isclose(lr_factor(12, 4, 12, 0.1), 0.1)


@pytest.mark.parametrize("field, value", [
    ("epochs", 0), ("batch_size", -1), ("accum_steps", 1.5), ("lr", 0.0), ("base_lr", float("nan")),
    ("warmup_epochs", -0.5), ("weight_decay", -1e-3), ("grad_clip", 0), ("seed", -1), ("betas", (0.9, 1.0)),
    ("checkpoint_every", 0), ("keep_checkpoints", 0), ("group_batches", 0), ("min_lr", -1.0),
])
def test_config_refuses_bad_values_naming_the_field(field, value):
    """A bad TrainConfig value is refused when the config is built (before any work), as a ConfigError naming it."""
    with pytest.raises(ConfigError) as error:
        TrainConfig(**{field: value})
    assert error.value.field == field and str(error.value).startswith(f"{field}: ")
    assert isinstance(error.value, MMAdapterError)


def test_lr_rule_and_optimizer_groups(setup):
    """lr = base x effective batch / 256 unless absolute; AdamW(0.9, 0.95) on adapter params only; gates undecayed."""
    model, _, _ = setup
    assert effective_lr(config(lr=None, base_lr=9e-3, batch_size=4, accum_steps=2), 8) == 9e-3 * 64 / 256
    assert effective_lr(config(lr=1e-3), 8) == 1e-3
    optimizer = build_optimizer(model, config(weight_decay=0.02), 1e-3)
    decayed, undecayed = optimizer.param_groups
    assert {p.shape for p in decayed["params"]} == {torch.Size([4, 64])} and decayed["weight_decay"] == 0.02
    assert {p.shape for p in undecayed["params"]} == {torch.Size([4])} and undecayed["weight_decay"] == 0.0
    assert decayed["betas"] == (0.9, 0.95) and len(decayed["params"]) + len(undecayed["params"]) == 8


def test_training_lowers_loss_and_writes_outputs(setup, tmp_path):
    """A short run lowers the loss clearly, leaves the base untouched, and writes adapter, metrics and plot."""
    model, examples, collate = setup
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = evaluate_loss(model, examples, collate, bf16=False)
    result = train(model, examples, config(epochs=4), collate, tmp_path / "run")
    after = evaluate_loss(model, examples, collate, bf16=False)
    assert after < before - 1.0, (before, after)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if not p.requires_grad)
    out = tmp_path / "run"
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(1, result.steps + 1)) and result.steps == 4 * 12
    assert {"loss", "lr", "tokens_per_s", "epoch"} <= lines[0].keys()
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    adapter = read_adapter(out / "adapter.safetensors")
    torch.testing.assert_close(adapter.layers[3]["gate"], model.model.layers[3].self_attn.adapter.gate.detach())


def test_bf16_autocast_trains(setup, tmp_path):
    """The bf16 flag runs the step under autocast and still learns (fp32 master parameters)."""
    model, examples, collate = setup
    before = evaluate_loss(model, examples, collate)
    train(model, examples, config(epochs=2, bf16=True), collate, tmp_path / "run")
    assert evaluate_loss(model, examples, collate) < before - 0.5


def test_nan_loss_stops_and_keeps_last_good_checkpoint(setup, tmp_path):
    """A non-finite loss stops with a clear message; the checkpoint before it is intact, no adapter is written."""
    model, examples, collate = setup
    calls = []

    def poisoned(m, batch):
        calls.append(1)
        loss = lm_loss_sum(m, batch)
        return loss * float("nan") if len(calls) == 6 else loss

    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 6.*step-00000004"):
        train(model, examples, config(), collate, tmp_path / "run", forward_loss=poisoned)
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert checkpoints == ["step-00000004"] and not (tmp_path / "run" / "adapter.safetensors").exists()


def test_refuses_incompatible_resume_and_existing_run_without_touching_files(setup, tmp_path):
    """Another lr on resume, or a fresh run into a used folder: one clear error, files byte-identical."""
    model, examples, collate = setup
    out = tmp_path / "run"
    train(model, examples, config(epochs=1), collate, out)
    snapshot = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(MMAdapterError, match=r"incompatible run \(lr: checkpoint 0.03, now 0.001\)"):
        train(model, examples, config(epochs=1, lr=1e-3, resume=True), collate, out)
    with pytest.raises(MMAdapterError, match=r"incompatible run \(data: checkpoint"):
        train(model, examples[:-4], config(epochs=1, resume=True), collate, out)
    with pytest.raises(MMAdapterError, match="already holds a run; pass --resume"):
        train(model, examples, config(epochs=1), collate, out)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == snapshot


def test_unwritable_output_folder_is_one_clear_error(setup, tmp_path):
    """A file as the output folder, a folder under a file, or --resume without a checkpoint: one clear error."""
    model, examples, collate = setup
    (tmp_path / "file").write_text("x")
    with pytest.raises(MMAdapterError, match="not a folder"):
        train(model, examples, config(), collate, tmp_path / "file")
    with pytest.raises(MMAdapterError, match="not writable"):
        train(model, examples, config(), collate, tmp_path / "file" / "sub")
    with pytest.raises(MMAdapterError, match="no checkpoint to resume from"):
        train(model, examples, config(resume=True), collate, tmp_path / "run")


def test_resume_drops_metrics_after_the_checkpoint_and_a_torn_line(tmp_path):
    """A run killed mid-write leaves steps past its checkpoint and maybe half a line; resume keeps only <= step."""
    lines = [json.dumps({"step": s, "loss": 1.0}) for s in range(1, 5)] + ['{"step": 5, "lo']
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines))
    MetricsLog(tmp_path, resume_step=2).close()
    assert (tmp_path / "metrics.jsonl").read_text().splitlines() == lines[:2]
