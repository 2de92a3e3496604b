"""Generated ScienceQA-format problems whose answer is only in a short recording.

The image and video sets' twin for sound: the same official layout, with each problem's recording at
``images/<split>/<pid>/audio.wav`` (16 kHz mono 16-bit PCM, ``CLIP_SECONDS`` long) named by the record's ``audio``
field (``image`` is null). Families:

* spoken content (eSpeak NG, :mod:`speech`): which number, colour or animal the speaker says (a carrier phrase or
  none), which colour of three is said last (all three are the options, so only the order tells);
* sound properties: which of two tones is higher (their absolute pitches overlap across problems, so only the
  comparison tells), how many beeps (1-4), whether a sweep rises or falls (the same band either way);
* a control answerable from the text: the answer is in the hint, the recording is a neutral sentence.

Families, their answers and the answer's position are dealt in shuffled blocks, so every split is balanced (no
answer guessable from the text or the option's place); voices, speeds, pitches, loudness, timing and background
noise are jittered. ``captions.json`` describes each recording without its answer (so a text-only run that reads
captions learns nothing from them). Families are kept only if a linear probe on the frozen Whisper encoder's
features reads their answer (``python -m bench.probe_audio``; the table is in docs/audio-set.md).

    mm-adapter data synthetic-audio OUT_DIR --n-train 600 --n-val 100 --n-test 200 --seed 0
"""

from __future__ import annotations

import io
import random
import wave
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from mm_adapter.scienceqa.speech import RATE, Speaker, Voice, random_voice
from mm_adapter.scienceqa.synthetic import COLORS, HIGH_GRADES, LOW_GRADES, Drawn, SaveMedia, hint_color, to_record

AUDIO_NAME = "audio.wav"
CLIP_SECONDS = 4.0
CLIP_SAMPLES = int(RATE * CLIP_SECONDS)
FADE = int(0.01 * RATE)  # 10 ms raised-cosine edges: no clicks


@dataclass(frozen=True)
class Event:
    """A part of the recording: when it sounds (seconds) and what it is (a word, "tone", "beep", "sweep")."""

    start: float
    end: float
    label: str


@dataclass
class Sound:
    """A drawn problem (answer ``drawn.choices[0]``), its recording and what sounds when (for tests and the probe)."""

    drawn: Drawn
    samples: np.ndarray  # float32 in [-1, 1], CLIP_SAMPLES long, at RATE
    events: list[Event]
    caption: str


@dataclass
class Track:
    """Parts placed one after another with gaps, after a random lead-in, over quiet background noise."""

    rng: random.Random
    parts: list[tuple[np.ndarray, str, float]] = field(default_factory=list)  # samples, label, gap before

    def add(self, samples: np.ndarray, label: str, gap: float = 0.0) -> None:
        self.parts.append((samples, label, gap))

    def render(self) -> tuple[np.ndarray, list[Event]]:
        length = sum(len(s) + int(gap * RATE) for s, _, gap in self.parts)
        slack = CLIP_SAMPLES - length - int(0.05 * RATE)
        if slack < 0:  # the families' ranges are chosen to fit; this is a bug, not bad input
            raise RuntimeError(f"parts of {length / RATE:.2f} s do not fit a {CLIP_SECONDS} s clip")
        noise = np.random.default_rng(self.rng.getrandbits(63))
        out = (noise.standard_normal(CLIP_SAMPLES) * self.rng.uniform(0.002, 0.006)).astype(np.float32)
        cursor, events = self.rng.randint(int(0.05 * RATE), min(slack, int(0.6 * RATE))), []
        for samples, label, gap in self.parts:
            cursor += int(gap * RATE)
            out[cursor:cursor + len(samples)] += samples * self.rng.uniform(0.4, 0.8)
            events.append(Event(cursor / RATE, (cursor + len(samples)) / RATE, label))
            cursor += len(samples)
        return np.clip(out, -1.0, 1.0), events


def tone(frequency: float | np.ndarray, seconds: float, harmonics: tuple[float, ...] = ()) -> np.ndarray:
    """A tone (peak 1) with faded edges; ``frequency`` may be one value per sample (a sweep); ``harmonics``: the
    relative amplitudes of the 2nd, 3rd, ... partials (a timbre)."""
    count = int(seconds * RATE)
    frequency = np.broadcast_to(np.asarray(frequency, dtype=np.float64), (count,))
    phase = 2 * np.pi * np.cumsum(frequency) / RATE
    wave_ = np.sin(phase) + sum(a * np.sin((k + 2) * phase) for k, a in enumerate(harmonics))
    edge = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, FADE))
    wave_[:FADE] *= edge
    wave_[-FADE:] *= edge[::-1]
    return (wave_ / np.abs(wave_).max()).astype(np.float32)


def _timbre(rng: random.Random) -> tuple[float, ...]:
    return rng.choice([(), (0.3,), (0.3, 0.15), (0.5, 0.25, 0.1)])


SPOKEN = {"subject": "language science", "topic": "phonological-awareness", "category": "Spoken words",
          "lecture": "Listen to the recording. A speaker says each word out loud, one word after another.",
          "grades": LOW_GRADES}
SOUND = {"subject": "natural science", "topic": "physics", "category": "Sound",
         "lecture": "Sound is a wave. Pitch is how high or low a sound is: a sound with a higher frequency has a "
                    "higher pitch.", "grades": LOW_GRADES + HIGH_GRADES}
LISTEN = "Listen to the recording."
NUMBERS = {"1": "one", "2": "two", "3": "three", "4": "four", "5": "five", "6": "six", "7": "seven", "8": "eight",
           "9": "nine"}
ANIMALS = ("bird", "cat", "cow", "dog", "duck", "frog", "goat", "horse", "lion", "mouse", "pig", "sheep")
RHYMES = ("bat", "cat", "hat", "mat", "rat", "sat")


def _options(rng: random.Random, answer: str, values: tuple[str, ...], count: int) -> list[str]:
    return [answer, *rng.sample([v for v in values if v != answer], count - 1)]


def _say(rng: random.Random, speaker: Speaker, text: str, carriers: tuple[str, ...], question: str,
         choices: list[str], skill: str, said: str) -> Sound:
    """One utterance (``text`` in a carrier phrase, or alone), asked about with ``question``."""
    voice = random_voice(rng)
    track = Track(rng)
    track.add(speaker.say(rng.choice(carriers).format(text), voice), text)
    samples, events = track.render()
    drawn = Drawn(question, choices, None, skill=skill, hint=LISTEN, solution=f"The speaker says {said}.", **SPOKEN)
    return Sound(drawn, samples, events, "A recording of a person speaking.")


def spoken_number(rng: random.Random, answer: str, speaker: Speaker) -> Sound:
    """A number word, 1-9, said alone or in a phrase; the options are digits."""
    return _say(rng, speaker, NUMBERS[answer], ("{}", "the number is {}", "I say {}", "number {}"),
                "Which number does the speaker say?", _options(rng, answer, tuple(NUMBERS), 4),
                "Identify a spoken number", f"the number {NUMBERS[answer]}")


def spoken_color(rng: random.Random, answer: str, speaker: Speaker) -> Sound:
    return _say(rng, speaker, answer, ("{}", "the color is {}", "I like {}", "it is {}"),
                "Which color does the speaker say?", _options(rng, answer, tuple(sorted(COLORS)), 4),
                "Identify a spoken color word", f"the color {answer}")


def spoken_animal(rng: random.Random, answer: str, speaker: Speaker) -> Sound:
    return _say(rng, speaker, answer, ("{}", "I see a {}", "look at the {}", "a {}"),
                "Which animal does the speaker name?", _options(rng, answer, ANIMALS, 4),
                "Identify a spoken word", f"the word {answer}")


def spoken_rhyme(rng: random.Random, answer: str, speaker: Speaker) -> Sound:
    """Rhyming words that differ only in their first sound (bat, cat, hat...): the hardest spoken family."""
    return _say(rng, speaker, answer, ("{}", "the word is {}"), "Which word does the speaker say?",
                _options(rng, answer, RHYMES, 4), "Identify a spoken word with the same ending",
                f"the word {answer}")


def color_last(rng: random.Random, answer: str, speaker: Speaker) -> Sound:
    """Three colours one after another; the options are exactly those three, so only their order tells."""
    names = [*rng.sample([c for c in sorted(COLORS) if c != answer], 2), answer]
    voice, track = random_voice(rng), Track(rng)
    for index, name in enumerate(names):
        track.add(speaker.say(name, voice), name, gap=rng.uniform(0.25, 0.5) if index else 0.0)
    samples, events = track.render()
    drawn = Drawn("Which color does the speaker say last?", [answer, *names[:2]], None,
                  skill="Identify the order of spoken words", hint="Listen to the recording. The speaker says "
                  "three colors.", solution=f"The speaker says {', '.join(names)}. The last color is {answer}.",
                  **SPOKEN)
    return Sound(drawn, samples, events, "A recording of a person speaking.")


TONE_CHOICES = ("the first tone", "the second tone")


def higher_tone(rng: random.Random, answer: str, speaker: Speaker) -> Sound:
    """Two tones; the higher is 1.5-2.5 times the lower, and the lower lies anywhere in 220-660 Hz, so a tone's
    own pitch does not say whether it is the higher one (one tone heard alone cannot answer)."""
    low = rng.uniform(220, 660)
    high = low * rng.uniform(1.5, 2.5)
    pitches = (high, low) if answer == TONE_CHOICES[0] else (low, high)
    timbre, track = _timbre(rng), Track(rng)
    for index, pitch in enumerate(pitches):
        track.add(tone(pitch, rng.uniform(0.35, 0.6), timbre), f"tone {pitch:.0f} Hz",
                  gap=rng.uniform(0.2, 0.45) if index else 0.0)
    samples, events = track.render()
    drawn = Drawn("Which tone has a higher pitch?", [answer, *(c for c in TONE_CHOICES if c != answer)], None,
                  skill="Compare the pitch of sounds", hint="Listen to the recording. It has two tones, one after "
                  "the other.", solution=f"The tones are {pitches[0]:.0f} Hz and then {pitches[1]:.0f} Hz. The higher "
                  f"pitch is {answer}.", **SOUND)
    return Sound(drawn, samples, events, "A recording of two tones.")


def beep_count(rng: random.Random, answer: str, speaker: Speaker) -> Sound:
    """1-4 beeps of one pitch (500-1500 Hz), each 0.1-0.2 s, 0.15-0.35 s apart."""
    pitch, timbre, track = rng.uniform(500, 1500), _timbre(rng), Track(rng)
    for index in range(int(answer)):
        track.add(tone(pitch, rng.uniform(0.1, 0.2), timbre), "beep", gap=rng.uniform(0.15, 0.35) if index else 0.0)
    samples, events = track.render()
    drawn = Drawn("How many beeps do you hear?", _options(rng, answer, ("1", "2", "3", "4"), 4), None,
                  skill="Count sounds", hint=LISTEN, solution=f"Count the beeps: there are {answer}.", **SOUND)
    return Sound(drawn, samples, events, "A recording of beeps.")


SWEEP_CHOICES = ("rising", "falling")


def sweep(rng: random.Random, answer: str, speaker: Speaker) -> Sound:
    """A tone gliding (log-linearly) between a low (250-500 Hz) and a high (2-4x) pitch, up or down: the same band
    either way, so only the direction over time tells."""
    low = rng.uniform(250, 500)
    high, seconds = low * rng.uniform(2, 4), rng.uniform(0.6, 1.2)
    path = np.geomspace(low, high, int(seconds * RATE))
    path = path if answer == "rising" else path[::-1]
    track = Track(rng)
    track.add(tone(path, seconds, _timbre(rng)), "sweep")
    samples, events = track.render()
    drawn = Drawn("Is the pitch of the sound rising or falling?", [answer, *(c for c in SWEEP_CHOICES if c != answer)],
                  None, skill="Identify rising and falling pitch", hint=LISTEN,
                  solution=f"The sound goes from {path[0]:.0f} Hz to {path[-1]:.0f} Hz: its pitch is {answer}.",
                  **SOUND)
    return Sound(drawn, samples, events, "A recording of a tone that changes pitch.")


NEUTRAL = ("Please read the text.", "Here is a short story.", "Read carefully, then answer.", "This is a recording.")


def control_hint(rng: random.Random, answer: str, speaker: Speaker) -> Sound:
    """Control: the image set's reading question (answer in the hint) with a recording that says nothing of it."""
    drawn = hint_color(rng, answer)
    track = Track(rng)
    track.add(speaker.say(rng.choice(NEUTRAL), random_voice(rng)), "neutral")
    samples, events = track.render()
    return Sound(drawn, samples, events, "A recording of a person speaking.")


@dataclass(frozen=True)
class Family:
    """A candidate family: its answer values (dealt in balanced blocks) and the function that draws a problem."""

    values: tuple[str, ...]
    make: Callable[[random.Random, str, Speaker], Sound]
    needs_audio: bool = True  # False: the control, answerable from the text


CANDIDATES: dict[str, Family] = {
    "spoken_number": Family(tuple(NUMBERS), spoken_number),
    "spoken_color": Family(tuple(sorted(COLORS)), spoken_color),
    "spoken_animal": Family(ANIMALS, spoken_animal),
    "spoken_rhyme": Family(RHYMES, spoken_rhyme),
    "color_last": Family(tuple(sorted(COLORS)), color_last),
    "higher_tone": Family(TONE_CHOICES, higher_tone),
    "beep_count": Family(("1", "2", "3", "4"), beep_count),
    "sweep": Family(SWEEP_CHOICES, sweep),
    "control_hint": Family(tuple(sorted(COLORS)), control_hint, needs_audio=False),
}
# Kept families and their shares of a block. Linear probe, frozen Whisper tiny.en (CTranslate2), clip frames in 4
# windows, 128 recordings each, 5-fold (python -m bench.probe_audio; table in docs/audio-set.md): every audio family
# is read far above chance (spoken 0.82-1.00, sound 0.87-1.00), the control's recording at chance (0.09, chance 0.17).
AUDIO_FAMILIES = {name: 2 for name in CANDIDATES if name != "control_hint"} | {"control_hint": 1}


def wav_bytes(samples: np.ndarray) -> bytes:
    """16 kHz mono 16-bit PCM WAV of float samples in [-1, 1]."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes((np.clip(samples, -1, 1) * 32767).round().astype("<i2").tobytes())
    return buffer.getvalue()


def save_wav(samples: np.ndarray) -> SaveMedia:
    return lambda folder: (folder / AUDIO_NAME).write_bytes(wav_bytes(samples))


class Dealer:
    """Shuffled blocks per key: over any stretch of draws every item comes up about equally often."""

    def __init__(self) -> None:
        self.queues: dict[object, list] = {}

    def next(self, key: object, rng: random.Random, items: list) -> object:
        queue = self.queues.setdefault(key, [])
        if not queue:
            queue.extend(rng.sample(items, len(items)))
        return queue.pop()


class AudioDraw:
    """``generate``'s ``draw`` for the audio set: families (by weight), each family's answers and the answer's
    position dealt in balanced blocks; one speech worker for the whole set."""

    def __init__(self, families: dict[str, int] | None = None, speaker: Speaker | None = None) -> None:
        self.families = AUDIO_FAMILIES if families is None else families
        self.speaker = speaker or Speaker()
        self.dealer = Dealer()

    def check(self) -> None:
        """Say one word, so an unusable speech engine is one line before any work (``ScienceQAError``)."""
        self.speaker.say("ready", Voice("en-us"))

    def sound(self, rng: random.Random, family: str) -> Sound:
        """A problem of ``family`` with the next answer of its block."""
        spec = CANDIDATES[family]
        return spec.make(rng, self.dealer.next((family, "answer"), rng, list(spec.values)), self.speaker)

    def __call__(self, rng: random.Random) -> tuple[dict, SaveMedia]:
        family = self.dealer.next("family", rng, [n for n, w in sorted(self.families.items()) for _ in range(w)])
        sound = self.sound(rng, family)
        position = self.dealer.next((family, "position"), rng, list(range(len(sound.drawn.choices))))
        record = to_record(sound.drawn, rng, family, None, answer_at=position)
        record.update(audio=AUDIO_NAME, caption=sound.caption)
        return record, save_wav(sound.samples)
