"""ScienceQA with clips through ``train scienceqa`` / ``eval scienceqa``, on a tiny Llama and the tiny ViT.

Each clip shows three colours one after the other and the question asks which came first, so only the frames' order
tells the answer. Ordered frames learn it; shuffled frames (the same budget) stay near chance. The adapter records
its frames, evaluation samples clips with them, a still image in the same set is held for every frame, and a clip
shorter than the frames is one line (exit 2) or skipped and counted.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from pathlib import Path

import pytest
from clips import gif
from test_demo_predictor import png
from test_multimodal import cache_dir, one_thread, word_tokenizer  # noqa: F401 (autouse fixtures)

from mm_adapter import AdapterConfig, TrainConfig, read_adapter
from mm_adapter.cli import main
from mm_adapter.cli.commands import find
from mm_adapter.cli.parse import parse
from mm_adapter.data.config import ScienceQASource
from mm_adapter.encoders.clip import TINY_VIT, VisualConfig
from mm_adapter.jobs.ablate import ablate_scienceqa
from mm_adapter.jobs.configs.ablation import AblateConfig
from mm_adapter.jobs.configs.evaluation import EvalScienceQAConfig
from mm_adapter.jobs.configs.training import TrainScienceQAConfig
from mm_adapter.jobs.eval_scienceqa import eval_scienceqa
from mm_adapter.model.config import ModelOptions
from mm_adapter.scienceqa.data import read_official
from tiny import tiny_model

COLOURS = ["red", "green", "blue"]
RGB = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220)}


def shade(rng: random.Random, colour: str) -> tuple[int, int, int]:
    """The colour jittered, so that no two clips are identical (a fixed shuffle of identical clips is learnable)."""
    return tuple(min(255, max(0, v + rng.randint(-25, 25))) for v in RGB[colour])


def record(split: str, question: str, answer: str, media: str | None) -> dict:
    return {"question": question, "choices": COLOURS, "answer": COLOURS.index(answer), "hint": "", "image": media,
            "split": split, "subject": "natural science", "grade": "grade2", "category": "Colors"}


def write_clip_dataset(root: Path, sizes: dict[str, int], seed: int = 0) -> Path:
    """Official layout: mostly 6-frame GIFs of the three colours (jittered shades) in a random order, two frames
    each, the question "which came first"; every 8th problem has no media, two in 8 a still picture ("which color
    is the picture")."""
    rng, problems, splits, pid = random.Random(seed), {}, {}, 0
    for split, n in sizes.items():
        splits[split] = []
        for i in range(n):
            pid += 1
            order = rng.sample(COLOURS, 3)
            folder = root / "images" / split / str(pid)
            if i % 8 == 7:
                problems[str(pid)] = record(split, "Which color is grass?", "green", None)
            elif i % 8 in (5, 6):
                folder.mkdir(parents=True)
                (folder / "image.png").write_bytes(png(shade(rng, order[0]), (32, 32)))
                problems[str(pid)] = record(split, "Which color is the picture?", order[0], "image.png")
            else:
                folder.mkdir(parents=True)
                (folder / "clip.gif").write_bytes(gif([shade(rng, c) for c in order for _ in range(2)]))
                problems[str(pid)] = record(split, "Which color came first?", order[0], "clip.gif")
            splits[split].append(str(pid))
    (root / "problems.json").write_text(json.dumps(problems))
    (root / "pid_splits.json").write_text(json.dumps(splits))
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("video")
    data = write_clip_dataset(folder / "data", {"train": 96, "val": 16, "test": 48})
    tokenizer = word_tokenizer(read_official(data)[0])
    model = tiny_model("llama-gqa", vocab_size=len(tokenizer), max_position_embeddings=512, initializer_range=0.2)
    model.save_pretrained(folder / "base")
    tokenizer.save_pretrained(folder / "base")
    return folder, data


def video_config(folder: Path, data: Path, out: Path, order: str = "ordered") -> TrainScienceQAConfig:
    """The tiny multimodal run of test_multimodal with clips as 3 frames in ``order``."""
    return TrainScienceQAConfig(
        out=str(out), source=ScienceQASource(data=str(data)), format="QCM-A", images=True,
        model=ModelOptions(base=str(folder / "base"), dtype="fp32"),
        adapter=AdapterConfig(adapter_len=8, adapter_layers=4, prompt_init="normal"),
        train=TrainConfig(epochs=8, warmup_epochs=1, batch_size=8, lr=5e-2, bf16=False, checkpoint_every=1000,
                          progress=False),
        visual=VisualConfig(clip_model=TINY_VIT, clip_layers=2, visual_standardize=True, frames=3, frame_order=order))


@pytest.fixture(scope="module")
def trained(setup):
    """The video ablation through its job: the ordered baseline, its frames shuffled, and the middle frame alone
    (--frames 1), each trained the same; their best adapters by name."""
    folder, data = setup
    baseline = video_config(folder, data, folder / "ablation")
    config = AblateConfig(**{f.name: getattr(baseline, f.name) for f in dataclasses.fields(TrainScienceQAConfig)},
                          gate_inits=[], layers=[], lengths=[], activations=[], blanked=False,
                          frame_orders=["shuffled"], frame_counts=[1])
    result = ablate_scienceqa(config)
    assert [(row.variant, row.setting, row.value) for row in result.rows] == [
        ("baseline", "visual.frame_order", "ordered"), ("order-shuffled", "visual.frame_order", "shuffled"),
        ("baseline", "visual.frames", 3), ("frames-1", "visual.frames", 1)]
    return {name: result.out / variant / "best.safetensors"
            for name, variant in (("ordered", "baseline"), ("shuffled", "order-shuffled"), ("middle", "frames-1"))}


def test_flags_spell_the_video_run(tmp_path):
    """``--frames K`` and ``--frame-order`` of `mm-adapter train scienceqa` set the visual config the job runs with."""
    flags = ["--base", str(tmp_path / "base"), "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"),
             "--format", "QCM-A", "--adapter-len", "8", "--adapter-layers", "4", "--prompt-init", "normal",
             "--epochs", "8", "--warmup-epochs", "1", "--batch-size", "8", "--lr", "5e-2", "--dtype", "fp32",
             "--no-bf16", "--checkpoint-every", "1000", "--no-progress", "--clip-model", TINY_VIT, "--clip-layers",
             "2", "--images", "--frames", "3", "--frame-order", "shuffled"]
    parsed = parse(find(["train", "scienceqa"])[0], flags)
    assert parsed == video_config(tmp_path, tmp_path / "data", tmp_path / "out", "shuffled")


def test_ordered_frames_learn_what_came_first_shuffled_frames_do_not(setup, trained):
    """On test clips, the ordered adapter answers which colour came first (>= 85%, chance 33%); the shuffled one and
    the middle frame alone, trained the same, stay near chance (<= 55%; the middle frame shows the second colour, so
    it can at best rule that one out). Still pictures in the same set are answered by all three."""
    folder, data = setup
    problems = {p.pid: p for p in read_official(data, "test")[0]}
    accuracy = {}
    for order, best in trained.items():
        result = eval_scienceqa(EvalScienceQAConfig(
            split="test", out=str(folder / f"{order}-test"), source=ScienceQASource(data=str(data)),
            adapter=str(best), bootstrap=0, progress=False, model=ModelOptions(base=str(folder / "base"))))
        answers = json.loads(result.predictions.read_text())["results"]
        for kind in ("clip.gif", "image.png"):
            pids = [pid for pid, p in problems.items() if p.image == kind]
            accuracy[order, kind] = sum(answers[pid] == problems[pid].answer for pid in pids) / len(pids)
    assert accuracy["ordered", "clip.gif"] >= 0.85, accuracy
    assert accuracy["shuffled", "clip.gif"] <= 0.55 and accuracy["middle", "clip.gif"] <= 0.55, accuracy
    assert min(accuracy[order, "image.png"] for order in trained) >= 0.8, accuracy


def test_the_adapter_records_its_frames_and_evaluation_samples_clips_with_them(setup, trained):
    """The adapter file carries frames=3 (the projection's last layer takes 3 frames), and evaluation reads each clip
    as 3 cached frames: one cache entry per frame."""
    adapter = read_adapter(trained["ordered"])
    visual = json.loads(adapter.extra_metadata["visual"])
    assert visual["frames"] == 3 and "frame_order" not in visual
    assert adapter.extra_tensors["visual.proj.2.weight"].shape[1] == 3 * 64
    assert json.loads(read_adapter(trained["shuffled"]).extra_metadata["visual"])["frame_order"] == "shuffled"
    middle = read_adapter(trained["middle"])
    assert "frames" not in json.loads(middle.extra_metadata["visual"])  # frames=1 is written as image adapters are
    assert middle.extra_tensors["visual.proj.2.weight"].shape[1] == 64
    entries = [path.name for path in Path(os.environ["MM_ADAPTER_CACHE"]).rglob("*.npy")]
    assert sum("-clip3-" in name for name in entries) == 3 * 100  # train, val and test clips, 3 frames each


def test_a_clip_shorter_than_the_frames_is_one_line_or_skipped(setup, trained, tmp_path, capfd):
    """A test clip with fewer frames than the adapter's is one line naming it (with --skip-bad-images), exit 2;
    with --skip-bad-images its problem is answered without media and the skip is counted."""
    folder, data = setup
    short = tmp_path / "data"
    short.mkdir()
    problems = json.loads((data / "problems.json").read_text())
    test_pids = json.loads((data / "pid_splits.json").read_text())["test"][:6]
    (short / "problems.json").write_text(json.dumps({pid: problems[pid] for pid in test_pids}))
    (short / "pid_splits.json").write_text(json.dumps({"test": test_pids}))
    for pid in test_pids:
        if problems[pid]["image"]:
            target = short / "images" / "test" / pid
            target.mkdir(parents=True)
            name = problems[pid]["image"]
            (target / name).write_bytes((data / "images" / "test" / pid / name).read_bytes())
    (short / "images" / "test" / test_pids[0] / "clip.gif").write_bytes(gif(["red", "blue"]))
    argv = ["eval", "scienceqa", "--data", str(short), "--split", "test", "--adapter", str(trained["ordered"]),
            "--base", str(folder / "base"), "--bootstrap", "0", "--no-progress"]
    capfd.readouterr()
    assert main([*argv, "--out", str(tmp_path / "stop")]) == 2
    last = capfd.readouterr().err.splitlines()[-1]
    assert last.startswith("error: ") and f"{test_pids[0]}/clip.gif: the clip has 2 frames, fewer than frames=3" in last
    assert "--skip-bad-images" in last
    assert main([*argv, "--out", str(tmp_path / "skip"), "--skip-bad-images"]) == 0
    assert "test: 1 bad image(s) skipped" in capfd.readouterr().err
    answered = json.loads((tmp_path / "skip" / "predictions.json").read_text())["results"]
    assert sorted(answered) == sorted(test_pids)


def test_the_video_benchmark_runs_its_three_variants_and_reports_temporal_accuracy(setup, tmp_path, capsys):
    """bench/video_temporal.py on its tiny path (tiny base and ViT, a small generated clip set): the ordered, shuffled
    and middle-frame runs, one test evaluation each, the test table and the accuracy per family with the temporal
    row; a second call trains and evaluates nothing again."""
    from bench import video_temporal

    folder, _ = setup
    argv = ["--out", str(tmp_path), "--base", str(folder / "base"), "--clip-model", TINY_VIT, "--clip-layers", "2",
            "--adapter-layers", "2", "--frames", "3", "--epochs", "1", "--sizes", "16", "8", "12", "--quiet"]
    assert video_temporal.main(argv) == 0
    out = capsys.readouterr().out
    assert "temporal questions on test: ordered - shuffled = " in out
    for name in ("ordered", "shuffled", "middle"):
        answered = json.loads((tmp_path / f"test-{name}" / "predictions.json").read_text())["results"]
        assert len(answered) == 12
    families = (tmp_path / "families.md").read_text().splitlines()
    assert families[0].startswith("| frames | temporal |") and [row.split(" |")[0] for row in families[2:]] == [
        "| ordered", "| shuffled", "| middle frame"]
    stamps = {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*.safetensors")}
    assert video_temporal.main(argv) == 0
    assert {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*.safetensors")} == stamps
