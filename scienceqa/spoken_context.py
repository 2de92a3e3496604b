"""Real ScienceQA problems whose written context is spoken instead (issue 24 item 3's real-data variant).

Of the official problems that have a context (a hint) and no picture, two sets with the same problems and splits:

* ``spoken/``: the hint is taken out of the text and read aloud by eSpeak NG (:mod:`speech`, a voice drawn per
  problem) into ``images/<split>/<pid>/audio.wav``, named by the record's ``audio`` field;
* ``written/``: the same records unchanged, hint included, no sound.

So one set gives the three conditions: ``spoken/`` without ``--audio`` has no context at all, with ``--audio`` the
model hears it, ``written/`` reads it. A recording is bounded by one Whisper window (the decoder refuses more than
30 s): whole sentences are said while they fit under ``MAX_SECONDS``, then as many words of the next one as fit.
``manifest.json`` records, per problem, the words said of the words written, the seconds and the voice.

    mm-adapter data spoken-context /work/shared/data/scienceqa OUT_DIR --seed 0
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mm_adapter.errors import ScienceQAError, fail
from mm_adapter.files.atomic import atomic_write_json
from mm_adapter.scienceqa.data import read_benchmark_json, read_problems, read_split
from mm_adapter.scienceqa.speech import RATE, Speaker, Voice, random_voice
from mm_adapter.scienceqa.synthetic import refuse_non_empty
from mm_adapter.scienceqa.synthetic_audio import AUDIO_NAME, wav_bytes

MAX_SECONDS = 29.5  # under the decoder's 30 s bound (encoders.audio.decode.MAX_AUDIO_SECONDS), with the lead-in
LEAD_IN = 0.2  # seconds of quiet before the first word and after the last
GAP = 0.3  # seconds between sentences
# Variants whose long passages Whisper tiny.en transcribes best. All 13 on the 138 val contexts (python -m
# bench.spoken_wer, seed 0): m1 13%, m6 15%, m4 23%, m2 24%, m7 25%, klatt 26%, m3 28% word errors; klatt3 32%,
# david 52%, f4 54%, Annie 73%, f1 84%, linda 91% (a single word suffices for the generated set, a passage does not).
CLEAR_VARIANTS = ("m1", "m2", "m3", "m4", "m6", "m7", "klatt")
SENTENCE_END = re.compile(r"(?<=[.!?:])\s+|\n+")
PLAIN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")  # a split or pid that becomes a folder: no separator, no ..


@dataclass(frozen=True)
class Spoken:
    """What a recording holds: ``said`` of the hint's ``words`` words, in ``seconds``, by ``voice``."""

    words: int
    said: int
    seconds: float
    voice: Voice

    @property
    def cut(self) -> bool:
        return self.said < self.words


def sentences(text: str) -> list[str]:
    """The hint in the pieces it is said in: sentences, and each line of a passage or a list on its own; a piece
    with nothing to say (a table's rule, a lone symbol) is left out."""
    return [piece.strip() for piece in SENTENCE_END.split(text) if re.search(r"\w", piece)]


def _join(pieces: Iterable[np.ndarray]) -> np.ndarray:
    gap, lead = np.zeros(int(GAP * RATE), np.float32), np.zeros(int(LEAD_IN * RATE), np.float32)
    parts = [lead]
    for index, piece in enumerate(pieces):
        parts += ([gap] if index else []) + [piece]
    return np.concatenate(parts + [lead])


def speak_bounded(speaker: Speaker, text: str, voice: Voice, max_seconds: float = MAX_SECONDS
                  ) -> tuple[np.ndarray, Spoken]:
    """``text`` said by ``voice`` within ``max_seconds``: whole sentences while they fit, then the longest run of
    the next sentence's words that fits (found by bisection, so a long passage costs a few extra utterances)."""
    limit = int(max_seconds * RATE)
    overhead = int(2 * LEAD_IN * RATE)
    said, pieces, length = 0, [], overhead
    for sentence in sentences(text):
        gap = int(GAP * RATE) if pieces else 0
        samples = speaker.say(sentence, voice)
        words = sentence.split()
        if length + gap + len(samples) > limit:  # the most of this sentence that fits, then stop
            low, high, best = 1, len(words) - 1, None
            while low <= high:
                middle = (low + high) // 2
                part = speaker.say(" ".join(words[:middle]), voice)
                if length + gap + len(part) <= limit:
                    low, best = middle + 1, (middle, part)
                else:
                    high = middle - 1
            if best is not None:
                said += best[0]
                pieces.append(best[1])
            break
        said += len(words)
        pieces.append(samples)
        length += gap + len(samples)
    if not pieces:
        raise ScienceQAError(f"{text[:40]!r}...: not even its first word fits in {max_seconds} s")
    samples = _join(pieces)
    return samples, Spoken(sum(len(piece.split()) for piece in sentences(text)), said, round(len(samples) / RATE, 3), voice)


def _voice(seed: int, pid: str) -> Voice:
    """A problem's voice depends on the seed and its pid only: the same whatever else is selected."""
    return random_voice(random.Random(f"{seed}:{pid}"), CLEAR_VARIANTS)


def select(data: str | Path, splits: Iterable[str]) -> dict[str, list[str]]:
    """Per split, in pid_splits.json order, the pids of problems with a written context and no picture (the
    benchmark's TXT problems without IMG); read and checked before anything is said or written."""
    root = Path(data)
    problems = read_problems(root / "problems.json")
    chosen = {}
    for split in splits:
        if not PLAIN_NAME.fullmatch(split):
            raise fail(root / "pid_splits.json", f"split {split!r} cannot name a folder (letters, digits, _ . -)")
        chosen[split] = [pid for pid in read_split(root, split)
                         if pid in problems and problems[pid].has_context and not problems[pid].has_image]
        for pid in chosen[split]:
            if not PLAIN_NAME.fullmatch(pid):
                raise fail(root / "pid_splits.json", "cannot name a folder (letters, digits, _ . -)", pid, split)
    return chosen


def generate_spoken_context(data: str | Path, out_dir: str | Path, splits: Iterable[str] = ("train", "val", "test"),
                            seed: int = 0, overwrite: bool = False, speaker: Speaker | None = None,
                            max_seconds: float = MAX_SECONDS) -> dict[str, int]:
    """Write ``out_dir/spoken``, ``out_dir/written`` and ``out_dir/manifest.json``; return problems per split.
    Everything is checked (the source read, the folder empty, a word said) before the first file is written."""
    root, out = Path(data), Path(out_dir)
    refuse_non_empty(out, overwrite)
    chosen = select(root, splits)
    raw = read_benchmark_json(root / "problems.json")
    speaker = speaker or Speaker()
    speaker.say("ready", Voice("en-us"))  # a missing speech engine is one line before any file
    spoken_records, written_records, manifest = {}, {}, {}
    for split, pids in chosen.items():
        for pid in pids:
            record = dict(raw[pid], split=split)
            samples, spoken = speak_bounded(speaker, record["hint"], _voice(seed, pid), max_seconds)
            folder = out / "spoken" / "images" / split / pid
            folder.mkdir(parents=True, exist_ok=True)
            (folder / AUDIO_NAME).write_bytes(wav_bytes(samples))
            spoken_records[pid] = dict(record, hint="", image=None, audio=AUDIO_NAME)
            written_records[pid] = dict(record, image=None)
            manifest[pid] = {"split": split, **asdict(spoken), "cut": spoken.cut}
    for name, records in (("spoken", spoken_records), ("written", written_records)):
        atomic_write_json(out / name / "problems.json", records, indent=1)
        atomic_write_json(out / name / "pid_splits.json", chosen)  # last: its presence marks a complete set
    atomic_write_json(out / "manifest.json", {"seed": seed, "max_seconds": max_seconds, "problems": manifest},
                      indent=1)
    return {split: len(pids) for split, pids in chosen.items()}
