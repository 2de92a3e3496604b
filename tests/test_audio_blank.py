"""``--blank-audio``: the sound-vs-silence comparison of issue 24. Every problem with a sound gets the features of one
second of silence (its own file is not read), in training and in evaluation, so an adapter trained that way learns
which problems have a sound but nothing of what it holds; the flag without sound is one line, exit 2."""

from __future__ import annotations

import json

import pytest
import torch
from test_audio_train import one_line_exit_2, setup, train_flags  # noqa: F401  (setup: the module's fixture)

from mm_adapter.cli import main
from mm_adapter.data.features import compute_audio_features, silent_sound
from mm_adapter.encoders.audio.config import AudioConfig
from mm_adapter.encoders.audio.whisper import build_audio_encoder
from mm_adapter.scienceqa.data import read_official


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MM_ADAPTER_CACHE", str(tmp_path / "feature-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)


def test_blanked_sounds_are_one_silence_and_their_files_are_not_read(setup, tmp_path):
    """Blanked: every problem with a sound has the same row (silence's), the others none, even where a sound file is
    unreadable; unblanked, the rows differ between pitches."""
    folder, data = setup
    problems = read_official(data)[0][:16]
    with_sound = [p for p in problems if p.audio is not None]
    broken = data / "images" / with_sound[0].split / with_sound[0].pid / with_sound[0].audio
    saved = broken.read_bytes()
    encoder = build_audio_encoder(AudioConfig(audio_encoder=str(folder / "whisper"), audio_layers=2),
                                  torch.device("cpu"))
    heard = compute_audio_features(encoder, problems, data)
    rows = torch.stack([heard.by_pid[p.pid] for p in with_sound])
    assert not torch.allclose(rows[0], rows[1])
    try:
        broken.write_bytes(b"not a sound at all")
        blanked = compute_audio_features(encoder, problems, data, blank=True)
    finally:
        broken.write_bytes(saved)
    assert set(blanked.by_pid) == {p.pid for p in with_sound}
    for row in blanked.by_pid.values():
        assert torch.equal(row, blanked.by_pid[with_sound[0].pid])
    assert not any(torch.allclose(blanked.by_pid[p.pid], heard.by_pid[p.pid]) for p in with_sound)
    assert silent_sound()[:4] == b"RIFF"


def test_an_adapter_trained_on_silence_does_not_hear_the_pitch(setup, capsys):
    """Trained and evaluated with --blank-audio, the adapter cannot tell the pitch (the sound-trained one of
    test_audio_train reaches 100%): test accuracy near the 1/3 of guessing, and eval's log says it blanked."""
    folder, data = setup
    run = folder / "silent-run"
    assert main(train_flags(folder, data, run, "--blank-audio")) == 0
    assert "every one blanked to silence" in "".join(capsys.readouterr())  # train logs on stdout, eval on stderr
    out = folder / "silent-eval"
    assert main(["eval", "scienceqa", "--split", "test", "--base", str(folder / "base"), "--data", str(data),
                 "--adapter", str(run / "best.safetensors"), "--out", str(out), "--bootstrap", "0", "--no-progress",
                 "--blank-audio"]) == 0
    assert "every one blanked to silence" in "".join(capsys.readouterr())  # train logs on stdout, eval on stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["Avg"] <= 60.0, summary  # 24 problems: 21 with a sound in three pitches, 3 without


def test_blank_audio_without_sound_is_one_line(setup, capsys, tmp_path):
    folder, data = setup
    argv = train_flags(folder, data, tmp_path / "run", "--blank-audio")
    argv.remove("--audio")
    one_line_exit_2(capsys, argv, "--blank-audio")
    assert not (tmp_path / "run").exists()
