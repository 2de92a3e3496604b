"""The generated audio set: official layout with audio.wav per problem, reproducible bytes (speech included, across
processes), balanced answers, and recordings that really carry what each family asks about (measured on the
samples: spectra, energy envelopes), while the text never does."""

from __future__ import annotations

import collections
import hashlib
import io
import json
import os
import random
import subprocess
import sys
import wave
from pathlib import Path

import av
import numpy as np
import pytest

from mm_adapter.cli import main
from mm_adapter.encoders.audio.decode import load_audio
from mm_adapter.errors import ScienceQAError
from mm_adapter.scienceqa import speech
from mm_adapter.scienceqa.data import audio_path, read_official
from mm_adapter.scienceqa.speech import RATE, Speaker, Voice
from mm_adapter.scienceqa.synthetic import generate
from mm_adapter.scienceqa.synthetic_audio import (
    AUDIO_FAMILIES,
    AUDIO_NAME,
    CANDIDATES,
    CLIP_SAMPLES,
    CLIP_SECONDS,
    NEUTRAL,
    AudioDraw,
    wav_bytes,
)

REPO = Path(__file__).resolve().parents[1]
BLOCK = sum(AUDIO_FAMILIES.values())  # family slots in one shuffled block
SIZES = {"train": BLOCK, "val": BLOCK, "test": BLOCK}  # a block each: every kept family in every split
SMALL = {"train": 6, "val": 2, "test": 2}
AUDIO_NEEDED = [name for name in AUDIO_FAMILIES if CANDIDATES[name].needs_audio]


@pytest.fixture(scope="module")
def speaker():
    speaker = Speaker()
    yield speaker
    speaker.close()


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("audio") / "sqa", SIZES, seed=2, draw=AudioDraw())


def decode(path: Path) -> tuple[np.ndarray, int, int]:
    """(samples, rate, channels) as a field decoder (PyAV/FFmpeg) reads the file."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        frames = [frame.to_ndarray() for frame in container.decode(stream)]
        return np.concatenate(frames, axis=1)[0], stream.rate, stream.codec_context.layout.nb_channels


def segments(samples: np.ndarray, hop: int = RATE // 100) -> list[tuple[int, int]]:
    """Spans (in samples) where the 10 ms energy envelope is well over the noise floor: each separate sound."""
    rms = np.sqrt(np.mean(samples[:len(samples) // hop * hop].reshape(-1, hop) ** 2, axis=1))
    loud = rms > max(8 * np.median(rms), 0.02)
    edges = np.flatnonzero(np.diff(np.r_[0, loud.astype(int), 0]))
    return [(start * hop, end * hop) for start, end in zip(edges[::2], edges[1::2])]


def peak_hz(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / RATE)[spectrum.argmax()])


def test_official_layout_with_a_recording_per_problem(generated):
    """problems.json, pid_splits.json and captions.json; every record names audio.wav (image null) and loads through
    the official loader; each file decodes (PyAV) as 16 kHz mono of exactly CLIP_SECONDS; the metadata columns are
    filled; captions describe the recording but never give the answer."""
    splits = json.loads((generated / "pid_splits.json").read_text())
    assert {split: len(pids) for split, pids in splits.items()} == SIZES
    records = json.loads((generated / "problems.json").read_text())
    captions = json.loads((generated / "captions.json").read_text())["captions"]
    assert set(captions) == set(records)
    for split, count in SIZES.items():
        problems, summary = read_official(generated, split)
        assert summary.loaded == count and summary.missing == 0 and all(not p.has_image for p in problems)
    for pid, record in records.items():
        assert record["audio"] == AUDIO_NAME and record["image"] is None and record["family"] in AUDIO_FAMILIES
        samples, rate, channels = decode(generated / "images" / record["split"] / pid / AUDIO_NAME)
        assert (rate, channels, len(samples)) == (RATE, 1, CLIP_SAMPLES) and len(samples) / rate == CLIP_SECONDS
        assert all(record[k] for k in ("question", "hint", "subject", "topic", "category", "skill", "grade",
                                       "solution"))
        assert record["lecture"] or record["family"] == "control_hint"  # the image set's reading question has none
        answer = record["choices"][record["answer"]]
        assert answer.lower() not in captions[pid].lower()
    assert {r["family"] for r in records.values()} == set(AUDIO_FAMILIES)
    assert {r["subject"] for r in records.values()} == {"natural science", "language science"}


def test_the_audio_path_reads_every_recording(generated):
    """The loader gives every problem its recording's file name, confined under images/, and the audio path's
    decoder (the one train/eval --audio use) reads it back as the samples written: 4 s at 16 kHz."""
    for split in SIZES:
        problems, _ = read_official(generated, split)
        for problem in problems:
            path = audio_path(problem, generated, must_exist=True)
            assert problem.audio == AUDIO_NAME and path == generated / "images" / split / problem.pid / AUDIO_NAME
            samples = load_audio(path)
            written, _, _ = decode(path)
            assert len(samples) == CLIP_SAMPLES and np.abs(samples - written / 32768).max() < 1e-3


def test_the_text_never_tells_an_audio_answer(generated):
    """For the families that need the sound, the question and hint are one fixed text per family (so they cannot
    depend on the answer) and never contain it; the control's answer is in its hint and its recording is a neutral
    sentence with none of the options."""
    records = json.loads((generated / "problems.json").read_text())
    by_family = collections.defaultdict(list)
    for record in records.values():
        by_family[record["family"]].append(record)
    for family in AUDIO_NEEDED:
        texts = {r["question"] + " " + r["hint"] for r in by_family[family]}
        assert len(texts) == 1, (family, texts)
        for record in by_family[family]:
            text = next(iter(texts)).lower()  # "rising or falling?" names every option, and so tells nothing
            assert record["choices"][record["answer"]].lower() not in text or all(
                choice.lower() in text for choice in record["choices"]), record
    for record in by_family["control_hint"]:
        answer = record["choices"][record["answer"]]
        assert answer in record["hint"] and not any(c in " ".join(NEUTRAL).lower() for c in record["choices"])


def test_answers_and_positions_are_dealt_evenly():
    """Over any run of draws each family's answers and the answer's option position come up equally often (within
    one), so neither the text nor the option's place predicts the answer; families follow their weights."""
    rng, draw = random.Random(5), AudioDraw()
    records = [draw(rng)[0] for _ in range(BLOCK * 6)]
    families = collections.Counter(r["family"] for r in records)
    assert families == {name: weight * 6 for name, weight in AUDIO_FAMILIES.items()}
    for family in AUDIO_FAMILIES:
        mine = [r for r in records if r["family"] == family]
        answers = collections.Counter(r["choices"][r["answer"]] for r in mine)
        positions = collections.Counter(r["answer"] for r in mine)
        values, choices = CANDIDATES[family].values, len(mine[0]["choices"])
        assert set(positions) == set(range(choices)) and max(positions.values()) - min(positions.values()) <= 1
        assert max(answers.values()) - min(answers.get(v, 0) for v in values) <= 1, (family, answers)


def test_same_seed_same_bytes_here_and_in_a_fresh_process(tmp_path):
    """Seeded and reproducible, speech included: the same seed writes byte-identical files again in this process
    and from the command line in a new process (eSpeak NG keeps state between utterances; the worker's fork per
    utterance is what makes this hold); another seed writes other problems."""
    def digest(root: Path) -> dict[str, str]:
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    expected = digest(generate(tmp_path / "first", SMALL, seed=2, draw=AudioDraw()))
    assert digest(generate(tmp_path / "again", SMALL, seed=2, draw=AudioDraw())) == expected
    done = subprocess.run([sys.executable, "-m", "mm_adapter", "data", "synthetic-audio", str(tmp_path / "cli"),
                           "--n-train", "6", "--n-val", "2", "--n-test", "2", "--seed", "2"],
                          check=False, capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert digest(tmp_path / "cli") == expected
    other = generate(tmp_path / "other", SMALL, seed=3, draw=AudioDraw())
    assert (other / "problems.json").read_bytes() != (tmp_path / "first" / "problems.json").read_bytes()


def test_every_voice_says_a_word_the_same_in_two_processes_whatever_came_before():
    """Each voice variant the generator draws from reproduces its samples in a second worker process that said
    other words first (libespeak-ng carries state from one utterance to the next, which the worker's fork per
    utterance cuts; variants with eSpeak's 'breath' noise differ between processes, which is why they are out)."""
    first, second = Speaker(), Speaker()
    try:
        for variant in speech.VARIANTS:
            voice = Voice(f"en-us+{variant}", 150, 60)
            second.say("three blue horses", voice)
            assert np.array_equal(first.say("purple", voice), second.say("purple", voice)), variant
    finally:
        first.close()
        second.close()


def test_speech_is_loud_and_differs_between_words(speaker):
    """Spoken recordings are well over the noise floor and differ with the word said (same voice, same seed)."""
    heard = {}
    for answer in ("1", "7"):
        sound = CANDIDATES["spoken_number"].make(random.Random(0), answer, speaker)
        assert segments(sound.samples), answer
        start, end = int(sound.events[0].start * RATE), int(sound.events[0].end * RATE)
        assert np.sqrt(np.mean(sound.samples[start:end] ** 2)) > 10 * np.sqrt(np.mean(sound.samples[:400] ** 2))
        heard[answer] = sound.samples
    assert not np.allclose(heard["1"], heard["7"])
    said = speaker.say("seven", Voice("en-us+m3")), speaker.say("three", Voice("en-us+m3"))
    assert len(said[0]) != len(said[1]) or not np.allclose(said[0], said[1])


def test_the_higher_tone_is_higher_in_the_spectrum(speaker):
    """The two sounds found by the energy envelope have spectral peaks whose order matches the answer."""
    for seed in range(30):
        rng = random.Random(seed)
        answer = rng.choice(CANDIDATES["higher_tone"].values)
        sound = CANDIDATES["higher_tone"].make(rng, answer, speaker)
        found = segments(sound.samples)
        assert len(found) == 2, (seed, found)
        first, second = (peak_hz(sound.samples[a:b]) for a, b in found)
        assert (first > second) == (answer == "the first tone"), (seed, first, second)
        assert max(first, second) / min(first, second) >= 1.4


def test_the_beeps_counted_from_the_envelope_are_the_answer(speaker):
    for seed in range(40):
        rng = random.Random(seed)
        answer = rng.choice(CANDIDATES["beep_count"].values)
        sound = CANDIDATES["beep_count"].make(rng, answer, speaker)
        assert len(segments(sound.samples)) == int(answer), (seed, answer, segments(sound.samples))


def test_the_sweep_goes_the_way_the_answer_says(speaker):
    """The spectral peak of the sweep's first fifth is below (rising) or above (falling) that of its last fifth."""
    for seed in range(30):
        rng = random.Random(seed)
        answer = rng.choice(CANDIDATES["sweep"].values)
        sound = CANDIDATES["sweep"].make(rng, answer, speaker)
        [(start, end)] = segments(sound.samples)
        fifth = (end - start) // 5
        begin, finish = peak_hz(sound.samples[start:start + fifth]), peak_hz(sound.samples[end - fifth:end])
        assert (finish > begin) == (answer == "rising"), (seed, begin, finish)


def test_the_last_colour_said_is_the_answer_and_all_options_are_said(speaker):
    """Three colours are said in turn; the options are exactly those three and the answer is the last, so only the
    order tells (the words themselves are all in the recording)."""
    for seed in range(10):
        rng = random.Random(seed)
        answer = rng.choice(CANDIDATES["color_last"].values)
        sound = CANDIDATES["color_last"].make(rng, answer, speaker)
        said = [event.label for event in sound.events]
        assert said[-1] == answer and sorted(said) == sorted(sound.drawn.choices) and len(set(said)) == 3
        assert all(a.end < b.start for a, b in zip(sound.events, sound.events[1:]))


def test_wav_bytes_round_trip():
    """The writer's 16-bit PCM keeps the samples to within one quantisation step."""
    samples = np.sin(np.linspace(0, 100, CLIP_SAMPLES)).astype(np.float32) * 0.5
    with wave.open(io.BytesIO(wav_bytes(samples))) as read:
        assert (read.getframerate(), read.getnchannels(), read.getsampwidth()) == (RATE, 1, 2)
        back = np.frombuffer(read.readframes(read.getnframes()), "<i2") / 32767
    assert np.abs(back - samples).max() <= 1 / 32767


def test_a_missing_speech_engine_is_one_line(tmp_path):
    """A Python without espeakng-loader (a bare venv) gives one line naming the package to install, not a trace."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True, timeout=120)
    bare = Speaker(python=str(tmp_path / "bare" / "bin" / "python"))
    with pytest.raises(ScienceQAError) as raised:
        bare.say("seven", Voice("en-us"))
    message = str(raised.value)
    assert "\n" not in message and "espeakng-loader" in message and "unavailable" in message, message


def test_an_unknown_voice_is_one_line(speaker):
    with pytest.raises(ScienceQAError, match="voice 'no-such-voice'"):
        speaker.say("seven", Voice("no-such-voice"))


def test_the_command_refuses_bad_flags_and_a_non_empty_folder(tmp_path, capsys):
    """Bad sizes are one line naming the flag with exit 2 and nothing written; a non-empty folder is refused with its
    file untouched unless --overwrite."""
    for flags, named in ((["--n-train", "-1"], "--n-train"), (["--n-test", "50001"], "--n-test"),
                         (["--seed", "-3"], "--seed")):
        assert main(["data", "synthetic-audio", str(tmp_path / "bad"), *flags]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and named in err, err
    assert not (tmp_path / "bad").exists()
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    small = ["--n-train", "3", "--n-val", "1", "--n-test", "1"]
    assert main(["data", "synthetic-audio", str(target), *small]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not empty" in err and "--overwrite" in err
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"] and (target / "keep.txt").read_text() == "mine"
    assert main(["data", "synthetic-audio", str(target), *small, "--overwrite"]) == 0
    assert "wrote 5 problems" in capsys.readouterr().out
    assert len(list(target.rglob(AUDIO_NAME))) == 5 and (target / "keep.txt").read_text() == "mine"


def test_the_probe_pools_only_the_frames_that_cover_the_clip():
    """Of Whisper's 1500 frames (30 s) the probe keeps the clip's CLIP_SECONDS * 50: its mean, and the means of
    equal windows side by side (the order the windows keep is what 'which came last' needs)."""
    from bench.probe_audio import FRAMES_PER_SECOND, pool

    frames = int(CLIP_SECONDS * FRAMES_PER_SECOND)
    hidden = np.zeros((2, 1500, 3), dtype=np.float32)
    hidden[:, frames:] = 100.0  # padding: must not count
    hidden[1, frames // 2:frames, 0] = 1.0  # the second half of the clip, in recording 1
    views = pool(hidden, windows=4)
    assert views["mean"].shape == (2, 3) and views["windows"].shape == (2, 12)
    assert np.allclose(views["mean"][0], 0) and np.isclose(views["mean"][1, 0], 0.5)
    assert np.allclose(views["windows"][1].reshape(4, 3)[:, 0], [0, 0, 1, 1])


def test_the_cross_validated_probe_reads_a_signal_and_not_noise():
    from bench.probe_audio import cross_validated

    rng = np.random.default_rng(0)
    labels = [str(i % 3) for i in range(60)]
    signal = rng.normal(size=(60, 16)) + np.eye(16)[[int(label) for label in labels]] * 4
    assert cross_validated(signal, labels, seed=0) >= 0.9
    assert cross_validated(rng.normal(size=(60, 16)), labels, seed=0) < 0.6


def test_the_probe_runs_on_the_real_encoder(tmp_path, capsys):
    """``bench.probe_audio`` end to end on the frozen CTranslate2 Whisper tiny.en (a few recordings: this checks the
    plumbing, not the verdicts, which come from the documented run): a row per family, the JSON rows written."""
    from bench import probe_audio

    assert probe_audio.main(["--n", "10", "--folds", "2", "--families", "sweep", "--encoders", "real",
                             "--json", str(tmp_path / "rows.json")]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("sweep"))
    assert row.split()[1:3] == ["2", "0.50"] and "readable" in row, row
    [written] = json.loads((tmp_path / "rows.json").read_text())["rows"]
    assert written["family"] == "sweep" and written["n"] == 10 and written["chance"] == 0.5
    assert 0 <= written["real mean"] <= 1 and 0 <= written["real windows"] <= 1


def test_the_probe_runs_as_a_benchmark_module():
    done = subprocess.run([sys.executable, "-m", "bench.probe_audio", "--help"], check=False, capture_output=True,
                          text=True, cwd=REPO, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    assert "linear probe" in done.stdout and "--encoders" in done.stdout and "--families" in done.stdout
