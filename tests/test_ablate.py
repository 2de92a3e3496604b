"""``mm-adapter ablate scienceqa`` on a tiny Llama, the tiny ViT and a generated image set (16 train, 8 val).

One ablation is run three times through the command: stopped by SIGTERM in its first variant, then continued (the
stopped variant resumes from its checkpoint, the others train), then once more (nothing trains). What it protects:
each variant changes exactly its one setting and trains once into OUT/<variant>; a variant equal to the baseline is
the baseline; the table (Markdown and JSON) and the chart hold every variant's best val accuracy, grouped by
ablation with the baseline marked; finished variants are never redone; a rerun with other training settings is
refused. Blanked images: every image problem gets the features of one mid-gray picture, its own file unread.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from mm_adapter.data.features import blank_image, compute_features
from mm_adapter.encoders.clip import TINY_VIT, build_encoder
from mm_adapter.encoders.config import VisualConfig
from mm_adapter.encoders.feature_cache import image_features
from mm_adapter.jobs import ablate
from mm_adapter.jobs.validation import LOG_NAME, best_logged
from mm_adapter.scienceqa.data import read_official
from mm_adapter.training.process import KILL_ENV
from test_formats_training import tiny_sqa  # noqa: F401  (fixture)
from tiny_text import command_here

CHANGED = {"baseline": None, "gate-random": ("adapter.gate_init", "random"), "layers-1": ("adapter.adapter_layers", 1),
           "layers-4": ("adapter.adapter_layers", 4), "len-2": ("adapter.adapter_len", 2),
           "activation-identity": ("adapter.gate_activation", "identity"), "images-blanked": ("blank_images", True)}


def arguments(base: Path, data: Path, out: Path, *extra: str) -> list[str]:
    """A tiny ablation: baseline 2 of the 4 layers x 4 prompts, images through the tiny ViT, 2 steps per variant."""
    return ["ablate", "scienceqa", "--base", str(base), "--data", str(data), "--out", str(out), "--images",
            "--clip-model", TINY_VIT, "--clip-layers", "2", "--layers", "1", "2", "4", "--adapter-layers", "2",
            "--lengths", "2", "4", "--adapter-len", "4", "--epochs", "1", "--batch-size", "8", "--dtype", "fp32",
            "--no-bf16", "--threads", "1", "--no-progress", *extra]


@pytest.fixture(scope="module")
def ablation(tiny_sqa, tmp_path_factory):  # noqa: F811
    """The ablation stopped by SIGTERM after step 1 of its first variant, then continued: (out, exit codes, the
    (variant, resume) of every training run the second call started)."""
    base, data = tiny_sqa
    out = tmp_path_factory.mktemp("ablation") / "out"
    calls = []

    def spy(config):
        calls.append((Path(config.out).name, config.train.resume))
        return train(config)

    train = ablate.train_scienceqa
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MM_ADAPTER_CACHE", str(out.parent / "cache"))
        patch.setenv(KILL_ENV, "1:SIGTERM")
        stopped = command_here(arguments(base, data, out))[0]
        patch.delenv(KILL_ENV)
        patch.setattr(ablate, "train_scienceqa", spy)
        continued = command_here(arguments(base, data, out))[0]
    return out, (stopped, continued), calls


def test_a_stopped_variant_resumes_and_every_other_trains_once(ablation):
    """SIGTERM in the first variant (the baseline) stops the command (143) with a checkpoint; the same command then
    resumes that variant from it and trains each other variant once, fresh, into its own folder."""
    out, codes, calls = ablation
    assert codes == (143, 0)
    assert calls[0] == ("baseline", True) and sorted(calls[1:]) == sorted((v, False) for v in CHANGED if v != "baseline")
    assert {p.name for p in out.iterdir() if p.is_dir()} == set(CHANGED)


def test_each_variant_changes_exactly_its_one_setting(ablation):
    """Every variant's recorded training config differs from the baseline's in its output folder and in the one
    setting its ablation varies, to the listed value."""
    out, _, _ = ablation
    read = {v: ablate.flat_settings(yaml.safe_load((out / v / "config.yaml").read_text())) for v in CHANGED}
    for variant, change in CHANGED.items():
        differ = {k: read[variant][k] for k in read[variant] if read[variant][k] != read["baseline"][k]}
        assert differ == ({} if change is None else {"out": str(out / variant), change[0]: change[1]})


def test_table_json_and_chart_hold_every_variants_best_val(ablation):
    """table.json has one row per bar, grouped by ablation in order, the baseline in every group and marked, each
    row the best val accuracy and step its run logged; table.md shows the same rows; table.png is a PNG."""
    out, _, _ = ablation
    rows = json.loads((out / "table.json").read_text())["rows"]
    assert [r["ablation"] for r in rows] == ["gate init"] * 2 + ["adapter layers"] * 3 + ["adapter len"] * 2 + [
        "gate activation"] * 2 + ["images"] * 2
    assert [r["label"] for r in rows] == ["zero", "random", "1", "2", "4", "2", "4", "tanh", "identity", "images",
                                         "blanked"]
    assert [r["variant"] for r in rows if r["baseline"]] == ["baseline"] * 5
    table = (out / "table.md").read_text()
    for row in rows:
        assert (row["val_acc"], row["best_step"]) == best_logged(out / row["variant"] / LOG_NAME)
        label = f"**{row['label']}** (baseline)" if row["baseline"] else row["label"]
        assert f"| {row['ablation']} | {label} | {100 * row['val_acc']:.2f} | {row['best_step']} |" in table
    assert (out / "table.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_blanked_variant_trained_on_one_gray_picture(ablation):
    """--blank-images reached training: every training image had the same features (the stored feature std is the
    floor everywhere), which is not so for the baseline's real images."""
    out, _, _ = ablation
    floor = torch.full_like(load_file(out / "images-blanked" / "best.safetensors")["visual.feature_std"], 1e-4)
    assert torch.equal(load_file(out / "images-blanked" / "best.safetensors")["visual.feature_std"], floor)
    assert not torch.equal(load_file(out / "baseline" / "best.safetensors")["visual.feature_std"], floor)


def test_a_finished_ablation_is_not_redone_and_other_settings_are_refused(ablation, tiny_sqa, capsys,  # noqa: F811
                                                                        monkeypatch):
    """Run again, nothing trains and stdout is the same table (a setting the recorded config lacks, as one added to
    the code since, counts as its default); run with another training setting, it is refused in one line naming it
    (exit 2) and nothing is written."""
    out, _, _ = ablation
    base, data = tiny_sqa
    monkeypatch.setenv("MM_ADAPTER_CACHE", str(out.parent / "cache"))
    monkeypatch.setattr(ablate, "train_scienceqa", lambda config: pytest.fail(f"{config.out} trained again"))
    before = (out / "table.md").read_text()
    recorded = yaml.safe_load((out / "config.yaml").read_text())
    del recorded["calibrate"], recorded["train"]["min_lr"]
    (out / "config.yaml").write_text(yaml.safe_dump(recorded))
    code, stdout, _ = command_here(arguments(base, data, out), capsys)
    assert code == 0 and stdout.startswith(before) and "0 variant(s) trained, 7 finished earlier" in stdout
    written = (out / "table.md").stat().st_mtime_ns
    code, stdout, err = command_here(arguments(base, data, out, "--lr", "0.5"), capsys)
    assert (code, stdout) == (2, "") and err.count("\n") == 1
    assert "holds an ablation with other training settings (train.lr: 0.005 there, 0.5 now)" in err
    assert (out / "table.md").stat().st_mtime_ns == written


def test_blanked_features_are_one_gray_picture_for_every_image_problem(tiny_sqa, tmp_path, monkeypatch):  # noqa: F811
    """blank=True: exactly the problems with an image get features, all those of the one mid-gray picture, and their
    own files are not read (one deleted here); real images give features that differ between problems."""
    monkeypatch.setenv("MM_ADAPTER_CACHE", str(tmp_path / "cache"))
    _, data = tiny_sqa
    problems = read_official(data, "val")[0]
    encoder = build_encoder(VisualConfig(clip_model=TINY_VIT, clip_layers=2), "cpu")
    gray = image_features(encoder, [blank_image()], cache=False).features[0]
    real = compute_features(encoder, problems, data)
    assert len({tuple(row.tolist()) for row in real.by_pid.values()}) > 1
    missing = next(p for p in problems if p.has_image)
    (data / "images" / "val" / missing.pid / "image.png").rename(tmp_path / "moved.png")
    try:
        blanked = compute_features(encoder, problems, data, blank=True)
    finally:
        (tmp_path / "moved.png").rename(data / "images" / "val" / missing.pid / "image.png")
    assert set(blanked.by_pid) == {p.pid for p in problems if p.has_image}
    assert all(torch.equal(row, gray) for row in blanked.by_pid.values())


@pytest.mark.parametrize("extra, message", [
    (["--layers", "0"], "error: --layers: must be positive integers, got [0]"),
    (["--gate-inits", "ones"], "invalid choice: 'ones'"),
    (["--gate-inits", "--layers", "--lengths", "--activations", "--no-images"], "error: nothing to ablate"),
    (["--no-images", "--blank-images"], "error: --blank-images: blanks the images of --images"),
    (["--no-images", "--method", "lora"], "error: --method: the ablations vary the gates, layers and prompts"),
    (["--frame-orders", "sideways"], "invalid choice: 'sideways'"),
    (["--frame-counts", "0"], "error: --frame-counts: must be integers from 1 to 64, got [0]"),
    (["--no-images", "--frame-orders", "shuffled"], "error: --frame-orders: compares the frames of video clips"),
])
def test_bad_ablation_settings_are_one_line_before_any_work(tmp_path, capsys, extra, message):
    """Bad axis values, an ablation with nothing to compare, blanked images or frame axes without images and a method
    without gates are one line, exit 2, and no output folder."""
    argv = arguments(tmp_path / "base", tmp_path / "data", tmp_path / "out", *extra)
    code, stdout, err = command_here(argv, capsys)
    assert (code, stdout) == (2, "") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
