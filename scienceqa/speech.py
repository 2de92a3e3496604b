"""Offline speech for the generated audio set: eSpeak NG from the pinned ``espeakng-loader`` wheel (its libespeak-ng
and voice data, no system package, nothing downloaded), in a worker process (``espeak_worker``) that makes every
utterance reproducible: the same text, voice, rate and pitch give the same samples, whatever was said before.

    speaker = Speaker()
    samples = speaker.say("seven", Voice("en-us+f3", rate=160, pitch=55))  # float32 at 16 kHz, peak 1
"""

from __future__ import annotations

import atexit
import json
import math
import os
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

from mm_adapter.errors import ScienceQAError

RATE = 16_000  # Hz: what Whisper's feature extractor takes
WORKER = Path(__file__).with_name("espeak_worker.py")
INSTALL = "pip install espeakng-loader==0.2.4 (pinned in constraints.txt)"
# English bases and voice variants of eSpeak NG's data, all clearly intelligible (no whisper, croak or robot) and
# none with 'breath' (f2, f3, f5: their noise is not the same from one process to the next)
BASES = ("en-us", "en", "en-gb-x-rp")
VARIANTS = ("m1", "m2", "m3", "m4", "m6", "m7", "f1", "f4", "klatt", "klatt3", "Annie", "david", "linda")
RATES = (130, 185)  # words a minute
PITCHES = (30, 70)  # eSpeak's 0-99 scale


@dataclass(frozen=True)
class Voice:
    """Who speaks and how: an eSpeak NG voice name (base language + variant), words a minute, pitch 0-99."""

    name: str
    rate: int = 160
    pitch: int = 50


def random_voice(rng: random.Random, variants: tuple[str, ...] = VARIANTS) -> Voice:
    """A voice (of ``variants``), speed and pitch drawn from the ranges above: the speech counterpart of the
    pictures' jitter."""
    return Voice(f"{rng.choice(BASES)}+{rng.choice(variants)}", rng.randint(*RATES), rng.randint(*PITCHES))


def trim(samples: np.ndarray, floor: float = 0.02, margin: int = RATE // 100) -> np.ndarray:
    """``samples`` without the leading and trailing near-silence eSpeak adds (below ``floor`` of the peak), keeping
    ``margin`` samples each side, so the caller places the word where it wants."""
    loud = np.flatnonzero(np.abs(samples) > floor * np.abs(samples).max())
    return samples[max(0, loud[0] - margin):loud[-1] + margin + 1]


class Speaker:
    """Text to 16 kHz float32 samples (peak 1, silence trimmed) through one eSpeak worker process."""

    def __init__(self, python: str = sys.executable) -> None:
        """``python``: the interpreter that runs the worker (this one: the environment with espeakng-loader)."""
        self.python = python
        self._worker: subprocess.Popen | None = None
        self._once = not hasattr(os, "fork")  # no fork: one worker process per utterance
        self._registered = False

    def _start(self) -> subprocess.Popen:
        command = [self.python, "-I", str(WORKER)] + (["--once"] if self._once else [])
        return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def _ask(self, request: dict) -> tuple[bytes, int]:
        if self._worker is None or self._worker.poll() is not None:
            self._worker = self._start()
            if not self._registered:
                atexit.register(self.close)
                self._registered = True
        worker = self._worker
        try:
            worker.stdin.write(json.dumps(request).encode() + b"\n")
            worker.stdin.flush()
            header = worker.stdout.readline()
        except BrokenPipeError:  # it exited before reading the request
            header = b""
        if not header:  # the worker died: it could not load or initialise eSpeak NG
            reason = worker.stderr.read().decode(errors="replace").strip().splitlines() or ["no message"]
            self._worker = None
            raise ScienceQAError(f"speech synthesis (eSpeak NG) is unavailable: {reason[-1]}; {INSTALL}")
        answer = json.loads(header)
        if "error" in answer:
            raise ScienceQAError(f"speech synthesis of {request['text']!r} with voice {request['voice']!r}: "
                                 f"{answer['error']}")
        data = worker.stdout.read(answer["samples"] * 2)
        if self._once:
            self.close()
        return data, answer["rate"]

    def say(self, text: str, voice: Voice) -> np.ndarray:
        """``text`` spoken by ``voice``: float32 samples at ``RATE``, peak 1, leading/trailing silence trimmed."""
        data, rate = self._ask({"text": text, "voice": voice.name, "rate": voice.rate, "pitch": voice.pitch})
        samples = np.frombuffer(data, dtype="<i2").astype(np.float32)
        if not samples.size or not np.abs(samples).max():
            raise ScienceQAError(f"speech synthesis of {text!r} with voice {voice.name!r} gave no sound")
        common = math.gcd(RATE, rate)
        samples = resample_poly(samples, RATE // common, rate // common).astype(np.float32)
        samples = trim(samples)
        return samples / np.abs(samples).max()

    def close(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None and worker.poll() is None:
            worker.stdin.close()
            worker.wait(timeout=10)
        if worker is not None:
            worker.stdout.close()
            worker.stderr.close()
