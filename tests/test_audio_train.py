"""Sound through the real commands, end to end on a tiny Llama and a tiny random Whisper folder: the answer is only
the pitch of the problem's sound (WAV, FLAC, MP3, OGG, M4A at odd rates and channel counts, named in the official
layout's "audio" field). ``train scienceqa --audio`` stores the audio part beside the adapter's, ``eval scienceqa``
and ``demo --audio`` hear with it, an old adapter file without one loads unchanged, and every bad input is one line,
exit 2, nothing written."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from test_multimodal import word_tokenizer
from tiny_audio import FORMATS, encode_audio, tiny_whisper_folder, write_ct2

from mm_adapter import read_adapter
from mm_adapter.cli import main
from mm_adapter.encoders.audio.adapter_part import audio_projection_from_adapter
from mm_adapter.scienceqa.data import read_official
from tiny import tiny_model

PITCHES = {"low": 220.0, "middle": 660.0, "high": 1980.0}
KINDS = [("wav", 44_100, 2), ("flac", 22_050, 1), ("mp3", 32_000, 2), ("ogg", 48_000, 1), ("m4a", 24_000, 2)]
FIXTURE = Path(__file__).with_name("fixtures") / "image_adapter_e4db5fc"


def write_sound_dataset(root: Path, sizes: dict[str, int], seed: int = 0) -> Path:
    """Official layout: every problem asks for the pitch of its sound, in one of five containers; one in eight has no
    sound (and asks about grass)."""
    rng, problems, splits, pid = random.Random(seed), {}, {}, 0
    for split, n in sizes.items():
        splits[split] = []
        for i in range(n):
            pid += 1
            pitch, with_sound = list(PITCHES)[i % 3], i % 8 != 7
            kind, rate, channels = KINDS[i % len(KINDS)]
            name = f"audio{FORMATS[kind][3]}" if with_sound else None
            problems[str(pid)] = {"question": "Which pitch is the sound?" if with_sound else "Which pitch is grass?",
                                  "choices": list(PITCHES), "answer": list(PITCHES).index(pitch if with_sound
                                                                                         else "middle"),
                                  "hint": "", "image": None, "audio": name, "split": split}
            splits[split].append(str(pid))
            if with_sound:
                folder = root / "images" / split / str(pid)
                folder.mkdir(parents=True)
                (folder / name).write_bytes(encode_audio(kind, rng.uniform(0.6, 1.4), rate, channels,
                                                         PITCHES[pitch] * rng.uniform(0.97, 1.03)))
    (root / "problems.json").write_text(json.dumps(problems))
    (root / "pid_splits.json").write_text(json.dumps(splits))
    return root


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MM_ADAPTER_CACHE", str(tmp_path / "feature-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sound")
    data = write_sound_dataset(folder / "data", {"train": 48, "val": 12, "test": 24})
    tokenizer = word_tokenizer(read_official(data)[0])
    model = tiny_model("llama-gqa", vocab_size=len(tokenizer), max_position_embeddings=512, initializer_range=0.2)
    model.save_pretrained(folder / "base")
    tokenizer.save_pretrained(folder / "base")
    tiny_whisper_folder(folder / "whisper", seed=1)
    tiny_whisper_folder(folder / "other-whisper", seed=2, width=32)
    return folder, data


def train_flags(folder: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "scienceqa", "--base", str(folder / "base"), "--data", str(data), "--out", str(out),
            "--format", "QCM-A", "--adapter-len", "8", "--adapter-layers", "4", "--prompt-init", "normal",
            "--epochs", "6", "--warmup-epochs", "1", "--batch-size", "8", "--lr", "5e-2", "--dtype", "fp32",
            "--no-bf16", "--no-progress", "--audio", "--audio-encoder", str(folder / "whisper"),
            "--audio-layers", "2", *extra]


@pytest.fixture(scope="module")
def trained(setup):
    folder, data = setup
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MM_ADAPTER_CACHE", str(folder / "feature-cache"))
        patch.setenv("HF_HUB_OFFLINE", "1")
        assert main(train_flags(folder, data, folder / "run")) == 0
    return folder / "run" / "best.safetensors"


def test_train_with_audio_stores_the_audio_part_like_the_visual_one(setup, trained):
    """The adapter file holds audio.* projection tensors, the AudioConfig, the feature width and the encoder's
    identity; the projection reloads from the stored tensors and is no longer zero (it was trained)."""
    adapter = read_adapter(trained)
    meta = adapter.extra_metadata
    assert json.loads(meta["audio"])["audio_encoder"] == str(setup[0] / "whisper") and meta["audio_in_dim"] == "128"
    assert "visual" not in meta and len(meta["audio_encoder"]) == 20
    config, projection = audio_projection_from_adapter(adapter)
    assert config.audio_layers == 2 and projection.in_dim == 128 and projection.proj[-1].weight.abs().sum() > 0


def test_eval_hears_each_problems_sound_and_learned_the_pitch(setup, trained, capsys):
    """eval scienceqa reads the audio part, encodes every problem's sound (all five containers) and answers better
    than the chance of 1/3 on the held-out test split (only the sound tells the pitch)."""
    folder, data = setup
    out = folder / "eval"
    assert main(["eval", "scienceqa", "--split", "test", "--base", str(folder / "base"), "--data", str(data),
                 "--adapter", str(trained), "--out", str(out), "--bootstrap", "0", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "sound: 21 of 24 problems" in err
    summary = json.loads((out / "summary.json").read_text())
    print(f"test accuracy with sound: {summary['Avg']}")
    assert summary["Avg"] >= 80.0, summary  # percent; chance is 33.3 (measured here: 100.0)


def test_demo_hears_the_audio_file(setup, trained, capsys, tmp_path):
    """demo --audio answers with the sound; the answer changes with the pitch heard; a text-only adapter ignores it
    and says so."""
    folder, _ = setup
    sounds = {p: tmp_path / f"{p}.flac" for p in PITCHES}
    for pitch, path in sounds.items():
        path.write_bytes(encode_audio("flac", 1.0, 44_100, 2, PITCHES[pitch]))
    answers = {}
    for pitch, path in sounds.items():
        assert main(["demo", "--question", "Which pitch is the sound?", "--choices", *PITCHES, "--base",
                     str(folder / "base"), "--adapter", str(trained), "--audio", str(path)]) == 0
        out = capsys.readouterr().out
        answers[pitch] = out
        assert "heard the sound" in out or "audio" in out
    assert len(set(answers.values())) > 1


def one_line_exit_2(capsys, argv: list[str], pattern: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    errors = [line for line in err.splitlines() if line.startswith("error:")]  # progress lines may come before it
    assert len(errors) == 1 and "Traceback" not in err, err
    assert __import__("re").search(pattern, errors[0]), err
    return errors[0]


def test_bad_audio_inputs_are_one_line_exit_2_nothing_written(setup, trained, capsys, tmp_path):
    """Not audio, truncated, zero-length, over the duration bound (in the data and to the demo), an encoder folder
    that is not Whisper, a CTranslate2 model of another type, an encoder whose width does not fit the adapter's
    projection: each one line naming the file, exit 2, and the output folder gets nothing."""
    folder, data = setup
    bad = {"text.wav": b"not a sound\n" * 50, "cut.flac": encode_audio("flac", 2.0)[:3000], "empty.mp3": b"",
           "long.ogg": encode_audio("ogg", 31.0)}
    for name, data_bytes in bad.items():
        (tmp_path / name).write_bytes(data_bytes)
    demo = ["demo", "--question", "Which pitch?", "--choices", *PITCHES, "--base", str(folder / "base"),
            "--adapter", str(trained)]
    for name, pattern in {"text.wav": "not an audio file", "cut.flac": "damaged or truncated FLAC",
                          "empty.mp3": "empty", "long.ogg": "audio too long"}.items():
        one_line_exit_2(capsys, [*demo, "--audio", str(tmp_path / name)], rf"{name}: .*{pattern}")
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama"}))
    translator = tmp_path / "translator"
    translator.mkdir()
    write_ct2(translator / "model.bin", "TransformerSpec", {"encoder/x": np.zeros(3, np.float32)})
    cases = {str(llama): "not a Whisper model folder", str(translator): "TransformerSpec model, not Whisper",
             str(folder / "other-whisper"): "audio projection takes 128 features, but the audio encoder .* gives 64"}
    for spec, pattern in cases.items():
        out = tmp_path / f"eval-{Path(spec).name}"
        one_line_exit_2(capsys, ["eval", "scienceqa", "--split", "test", "--base", str(folder / "base"), "--data",
                                 str(data), "--adapter", str(trained), "--out", str(out), "--audio-encoder", spec],
                        pattern)
        assert not out.exists() or not any(out.iterdir())
        if "projection" not in pattern:  # training with another width is a new run, not a mismatch
            train_out = tmp_path / f"train-{Path(spec).name}"
            one_line_exit_2(capsys, [*train_flags(folder, data, train_out)[:-4], "--audio-encoder", spec,
                                     "--audio-layers", "2"], pattern)
            assert not (train_out / "config.yaml").exists()
    # a sound in the data that is not one: the training run stops in one line naming it
    broken = write_sound_dataset(tmp_path / "broken", {"train": 8, "val": 4})
    victim = next((broken / "images" / "train").glob("*/audio.*"))
    victim.write_bytes(b"")
    out = tmp_path / "train-broken"
    one_line_exit_2(capsys, train_flags(folder, broken, out), rf"{victim.name}: the audio file is empty.*"
                                                                r"--skip-bad-audio")
    assert not (out / "best.safetensors").exists() and not (out / "config.yaml").exists()


def test_an_image_adapter_from_before_audio_loads_unchanged(setup):
    """The committed image adapter fixture (written before audio existed) has no audio part and reads as before."""
    files = sorted(FIXTURE.glob("*.safetensors")) if FIXTURE.is_dir() else []
    if not files:
        pytest.skip(f"no adapter fixture at {FIXTURE}")
    adapter = read_adapter(files[0])
    assert audio_projection_from_adapter(adapter) is None and "visual" in adapter.extra_metadata


def test_a_missing_audio_encoder_is_refused_before_the_data_loads(setup, capsys, tmp_path):
    """--audio-encoder naming nothing: one line from the checks before work (jobs.preflight), before any split is
    read or the base loaded, and no run folder."""
    folder, data = setup
    argv = train_flags(folder, data, tmp_path / "run")
    argv[argv.index("--audio-encoder") + 1] = str(tmp_path / "nowhere")
    capsys.readouterr()
    assert main(argv) == 2
    printed = capsys.readouterr()
    assert printed.out == "" and printed.err.count("\n") == 1, printed  # no "split train: loaded ..." before it
    assert "--audio-encoder: audio encoder" in printed.err and "nowhere': no such folder" in printed.err
    assert not (tmp_path / "run").exists()
