"""Generated ScienceQA-format problems about short clips whose answer needs the order of the frames.

The generated image set's twin for video: the same official layout, but an image problem's media is an
animated GIF, ``images/<split>/<pid>/clip.gif``, which its record's ``image`` field names (the loader, the
IMG column and the visual path take it as they take an image). Families are built only from what a linear
probe reads in random-weight CLIP features of one frame (a colour, a lamp on or off:
``bench/probe_video.py``), and the temporal ones are drawn so that the frames *without their order* say
nothing about the answer: every option's colour is in the clip, the phases' lengths are drawn
independently, and the lamp's lit and dark time do not depend on how often it flashes. Positions shake
at random each frame, so no frame's place in time shows in it. A few text-only problems (the image set's
families) fill the TXT and NO columns.

    mm-adapter data synthetic-video OUT_DIR --n-train 600 --n-val 60 --n-test 200 --seed 0
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from typing import Callable

from PIL import Image, ImageDraw

from mm_adapter.scienceqa.synthetic import COLORS, SIZE, Drawn, SaveMedia, choose_family, make_problem, to_record

CLIP_NAME = "clip.gif"
FRAME_MS = 80  # shown at 12.5 frames per second
PHASE_FRAMES = (6, 12)  # each phase lasts this many frames: at 8 sampled frames of at most 48, each phase is seen
LAMP_ON, LAMP_OFF = (250, 225, 40), (70, 70, 70)
BACKGROUND = (255, 255, 255)


@dataclass
class Clip:
    """A drawn problem (answer ``drawn.choices[0]``), its frames, and what each frame shows (for the probe)."""

    drawn: Drawn
    frames: list[Image.Image]
    labels: list[str]


def _shade(rng: random.Random, colour: tuple[int, int, int], spread: int = 20) -> tuple[int, int, int]:
    return tuple(min(255, max(0, v + rng.randint(-spread, spread))) for v in colour)


def _frames(rng: random.Random, fills: list[tuple[int, int, int]]) -> list[Image.Image]:
    """One frame per fill: a disc of that colour on white, at a spot that shakes at random from frame to frame
    (so a frame's position tells nothing of its time); palette images, so the GIF keeps the colours exactly."""
    palette = [BACKGROUND] + sorted(set(fills))
    flat = [v for colour in palette for v in colour]
    cx, cy, r = rng.randint(80, 144), rng.randint(80, 144), rng.randint(40, 60)
    frames, spot = [], None
    for fill in fills:
        frame = Image.new("P", (SIZE, SIZE), 0)
        frame.putpalette(flat)
        last, spot = spot, None
        while spot in (None, last):  # a frame equal to the one before would be merged into it by the GIF writer
            spot = (cx + rng.randint(-6, 6), cy + rng.randint(-6, 6))
        x, y = spot
        ImageDraw.Draw(frame).ellipse((x - r, y - r, x + r, y + r), fill=palette.index(fill))
        frames.append(frame)
    return frames


def _phases(rng: random.Random, count: int) -> list[int]:
    return [rng.randint(*PHASE_FRAMES) for _ in range(count)]


def _colour_clip(rng: random.Random, names: list[str]) -> tuple[list[Image.Image], list[str]]:
    """The lamp shows ``names`` one after the other, each for a phase of random length."""
    fills, labels = [], []
    for name, length in zip(names, _phases(rng, len(names))):
        shade = _shade(rng, COLORS[name])
        fills += [shade] * length
        labels += [name] * length
    return _frames(rng, fills), labels


LIGHT = dict(subject="natural science", topic="physics", category="Light and color",
             skill="Observe how a light changes over time",
             lecture="A clip is a series of pictures shown one after the other. What happens first is shown "
                     "first, and what happens last is shown last.")


def colour_first(rng: random.Random) -> Clip:
    """Four colours in turn; which came first (every option is in the clip, so only the order tells)."""
    names = rng.sample(sorted(COLORS), 4)
    frames, labels = _colour_clip(rng, names)
    return Clip(Drawn("Which color did the lamp show first?", names, None,
                      hint="The clip shows a lamp that changes color.",
                      solution=f"Watch the clip from its start. The lamp is {names[0]} first.", **LIGHT),
                frames, labels)


def colour_last(rng: random.Random) -> Clip:
    """Four colours in turn; which is shown at the end."""
    names = rng.sample(sorted(COLORS), 4)
    frames, labels = _colour_clip(rng, names)
    return Clip(Drawn("What color is the lamp at the end of the clip?", [names[-1], *names[:-1]], None,
                      hint="The clip shows a lamp that changes color.",
                      solution=f"Watch the clip to its end. The lamp is {names[-1]} at the end.", **LIGHT),
                frames, labels)


def colour_still(rng: random.Random) -> Clip:
    """Control: one colour throughout; every frame (and so any order, or the middle frame alone) tells it."""
    names = rng.sample(sorted(COLORS), 4)
    frames, labels = _colour_clip(rng, [names[0]] * 3)
    return Clip(Drawn("What color is the lamp?", names, None, hint="The clip shows a lamp.",
                      solution=f"The lamp is {names[0]} in every frame.", **LIGHT), frames, labels)


def _split(rng: random.Random, total: int, parts: int, least: int) -> list[int]:
    """``total`` as ``parts`` random lengths of at least ``least`` each."""
    cuts = sorted(rng.randint(0, total - parts * least) for _ in range(parts - 1))
    spans = [b - a for a, b in zip([0, *cuts], [*cuts, total - parts * least])]
    return [least + span for span in spans]


def flash_count(rng: random.Random) -> Clip:
    """A lamp flashes 1, 2 or 3 times; lit and dark time (18-24 frames each) do not depend on the count, so only the
    order of lit and dark frames tells how often it turned on."""
    flashes = rng.randint(1, 3)
    least = PHASE_FRAMES[0]
    lit = _split(rng, rng.randint(18, 24), flashes, least)
    dark = _split(rng, rng.randint(18, 24) - least * (flashes - 1), flashes + 1, 0)
    dark = [d + (least if 0 < i < flashes else 0) for i, d in enumerate(dark)]  # gaps between flashes are seen
    fills, labels = [LAMP_OFF] * dark[0], ["off"] * dark[0]
    for on, off in zip(lit, dark[1:]):
        fills += [_shade(rng, LAMP_ON, 5)] * on + [LAMP_OFF] * off
        labels += ["on"] * on + ["off"] * off
    words = {1: "once", 2: "twice", 3: "three times"}
    choices = [words[flashes]] + [w for n, w in words.items() if n != flashes] + ["four times"]
    return Clip(Drawn("How many times does the lamp turn on?", choices, None,
                      subject="natural science", topic="physics", category="Electricity",
                      skill="Count events in a clip", hint="The clip shows a lamp that turns on and off.",
                      solution=f"Count the flashes from the start to the end of the clip: the lamp turns on "
                               f"{words[flashes]}."),
                _frames(rng, fills), labels)


CANDIDATES: dict[str, Callable[[random.Random], Clip]] = {
    "colour_first": colour_first, "colour_last": colour_last, "colour_still": colour_still,
    "flash_count": flash_count}
TEMPORAL = ("colour_first", "colour_last", "flash_count")  # families whose answer needs the frames' order
# Kept families (weights): every candidate passed bench/probe_video.py (numbers in docs/video.md); the control that
# any single frame answers is drawn half as often.
VIDEO_FAMILIES = {"colour_first": 1.0, "colour_last": 1.0, "flash_count": 1.0, "colour_still": 0.5}


def clip_bytes(frames: list[Image.Image]) -> bytes:
    """The frames as an animated GIF, every one kept (``_frames`` makes neighbours differ, so none is merged)."""
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=FRAME_MS, loop=0,
                   optimize=False, disposal=1)
    return buffer.getvalue()


def save_clip(frames: list[Image.Image]) -> SaveMedia:
    """The writer of ``clip.gif`` into a problem's folder."""
    return lambda folder: (folder / CLIP_NAME).write_bytes(clip_bytes(frames))


def make_clip_problem(rng: random.Random, family: str) -> tuple[dict, SaveMedia | None]:
    """One official-format record (answer shuffled with ``rng``) and the writer of its clip (None: text only)."""
    if family not in CANDIDATES:
        record, _ = make_problem(rng, family)  # a text family of the image set
        return record, None
    clip = CANDIDATES[family](rng)
    return to_record(clip.drawn, rng, family, CLIP_NAME), save_clip(clip.frames)


def draw_clip_problem(rng: random.Random) -> tuple[dict, SaveMedia | None]:
    return make_clip_problem(rng, choose_family(rng, VIDEO_FAMILIES))
