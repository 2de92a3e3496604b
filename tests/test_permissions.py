"""What the project writes can be read by a colleague or a web server: files and folders get the permissions a
plain open()/mkdir() would give under the user's umask (tempfile's 0600/0700 never leak into outputs)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from mm_adapter import AdapterConfig, attach_adapter, save_adapter
from mm_adapter.encoders.feature_cache import FeatureCache
from mm_adapter.files.output_folder import write_config
from mm_adapter.interop.peft import export_peft
from mm_adapter.training.checkpoints.format import save_checkpoint
from mm_adapter.training.config import TrainConfig
from mm_adapter.training.metrics_log import MetricsLog
from tiny import tiny_model


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_every_writer_gives_umask_permissions(tmp_path, umask_022):
    """Adapter file, checkpoint folder and its files, metrics, loss plot, feature cache entry, PEFT export and
    config.yaml: 0644 files and 0755 folders under umask 022."""
    model = tiny_model("llama-mha")
    attach_adapter(model, AdapterConfig(adapter_len=2, adapter_layers=2, gate_activation="identity"))
    written = [save_adapter(model, tmp_path / "adapter.safetensors")]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    checkpoint = save_checkpoint(tmp_path / "checkpoints", 1, model, optimizer, scheduler, {"run": 1})
    written += [checkpoint, *checkpoint.iterdir()]
    log = MetricsLog(tmp_path, None)
    log.write({"step": 1, "loss": 1.0})
    log.plot()
    log.close()
    written += [tmp_path / "metrics.jsonl", tmp_path / "loss.png"]

    class Encoder:  # the cache needs only a feature width and an identity
        feature_dim, identity = 4, "test-encoder"

    cache = FeatureCache(Encoder(), root=tmp_path / "cache")
    cache.put("ab" * 32, torch.ones(4))
    written.append(cache.path("ab" * 32))
    written.append(export_peft(model, tmp_path / "peft"))
    written += list((tmp_path / "peft").iterdir())
    written.append(write_config(tmp_path, "train alpaca", TrainConfig()))
    for path in written:
        assert mode(path) == (0o755 if path.is_dir() else 0o644), f"{path}: {oct(mode(path))}"
