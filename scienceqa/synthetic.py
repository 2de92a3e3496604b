"""Generated ScienceQA-format problems whose answer is visible only in the image.

The families copy real ScienceQA question families (their question text, choices, context hints,
subjects and skills); the pictures are drawn with PIL at 224x224. Where no real ScienceQA images
exist (as here, where the image encoder also has random weights), this is the set on which "with
images" must beat "text only". Families are kept only if a linear probe on random-weight CLIP
features reads their answer (``python -m bench.probe_synthetic``); relations between parts are not
(left-vs-right 52%, which magnet poles face each other 53%: chance). Pictures are jittered (place, size,
shade) so a probe or model cannot just memorise a handful of identical images. A few text-only problems give the TXT (answer in the hint)
and NO (neither hint nor image) columns.

    mm-adapter data synthetic-images OUT_DIR --n-train 600 --n-val 100 --n-test 200 --seed 0
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from PIL import Image, ImageDraw

from mm_adapter.errors import ScienceQAError
from mm_adapter.files.atomic import atomic_write_json

SIZE = 224
COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 210, 30),
          "purple": (140, 60, 180), "orange": (240, 140, 30)}
LOW_GRADES = [f"grade{g}" for g in range(2, 7)]
HIGH_GRADES = [f"grade{g}" for g in range(7, 10)]


@dataclass
class Drawn:
    """One generated problem before shuffling: the answer is ``choices[0]``."""

    question: str
    choices: list[str]
    image: Image.Image | None
    subject: str
    topic: str
    category: str
    skill: str
    hint: str = ""
    lecture: str = ""
    solution: str = ""
    grades: list[str] = field(default_factory=lambda: LOW_GRADES + HIGH_GRADES)


def _shade(rng: random.Random, name: str, spread: int = 25) -> tuple[int, int, int]:
    """The named colour with a little per-picture jitter, so no two pictures are identical."""
    return tuple(min(255, max(0, v + rng.randint(-spread, spread))) for v in COLORS[name])


def _canvas(background=(255, 255, 255)) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("RGB", (SIZE, SIZE), background)
    return image, ImageDraw.Draw(image)


def _beaker(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], liquid=(205, 230, 250)) -> None:
    x0, y0, x1, y1 = box
    draw.rectangle((x0, y0 + (y1 - y0) // 4, x1, y1), fill=liquid)
    draw.line((x0, y0, x0, y1, x1, y1, x1, y0), fill=(60, 60, 60), width=3)


def solution_color(rng: random.Random) -> Drawn:
    """A beaker of a coloured solution; the colour is only in the picture."""
    names = rng.sample(sorted(COLORS), 3)
    image, draw = _canvas()
    x, y, w, h = rng.randint(30, 90), rng.randint(20, 50), rng.randint(80, 110), rng.randint(120, 150)
    _beaker(draw, (x, y, x + w, y + h), liquid=_shade(rng, names[0]))
    return Drawn("Which color is the solution in the beaker?", names, image, "natural science", "chemistry",
                 "Solutions", "Identify the properties of a solution",
                 hint="The picture shows a beaker of a solution.",
                 lecture="A solution is a mixture in which a solute is dissolved evenly in a solvent. "
                         "Some solutes give the solution a color.",
                 solution=f"Look at the beaker. The solution in it is {names[0]}.")


def concentration(rng: random.Random) -> Drawn:
    """Two beakers of equal volume, 5 vs 25 particles (or equal); the real family, position included."""
    name = rng.choice(sorted(COLORS))
    kind = rng.choice(["Solution A", "Solution B", "neither; their concentrations are the same"])
    counts = {"Solution A": (30, 3), "Solution B": (3, 30)}.get(kind) or (rng.choice([3, 30]),) * 2
    image, draw = _canvas()
    for (x0, x1), count, label in zip(((14, 104), (120, 210)), counts, "AB"):
        _beaker(draw, (x0, 50, x1, 190))
        for _ in range(count):
            x, y = rng.randint(x0 + 9, x1 - 9), rng.randint(94, 181)
            draw.ellipse((x - 7, y - 7, x + 7, y + 7), fill=COLORS[name])
        draw.text(((x0 + x1) // 2 - 24, 200), f"Solution {label}", fill=(0, 0, 0))
    others = [c for c in ("Solution A", "Solution B", "neither; their concentrations are the same") if c != kind]
    return Drawn(f"Which solution has a higher concentration of {name} particles?", [kind] + others, image,
                 "natural science", "chemistry", "Solutions", "Compare concentrations of solutions",
                 hint=f"The diagram below is a model of two solutions. Each {name} ball represents one particle "
                      "of solute.",
                 lecture="The concentration of a solute in a solution is the number of solute particles per "
                         "volume of solvent.",
                 solution="Both solutions have the same volume, so the one with more particles has the higher "
                          f"concentration. The answer is: {kind}.", grades=HIGH_GRADES)


CONTINENTS = {  # name -> polygon on a stylised map; areas differ, so the highlight's size names it
    "Asia": [(120, 30), (215, 35), (210, 110), (150, 120), (118, 80)],
    "Africa": [(95, 95), (135, 100), (130, 160), (108, 180), (90, 130)],
    "North America": [(15, 30), (85, 25), (75, 80), (45, 100), (20, 70)],
    "South America": [(55, 115), (80, 120), (70, 185), (58, 190)],
    "Europe": [(95, 40), (118, 38), (115, 75), (97, 72)],
    "Australia": [(170, 150), (205, 150), (200, 175), (172, 172)],
    "Antarctica": [(40, 205), (190, 205), (190, 218), (40, 218)],
}


def continent(rng: random.Random) -> Drawn:
    """A world map with one continent highlighted (the real 'Which continent is highlighted?')."""
    names = rng.sample(sorted(CONTINENTS), 4)
    image, draw = _canvas((170, 210, 240))
    dx, dy = rng.randint(-6, 6), rng.randint(-4, 4)  # the whole map shifts a little
    for name, polygon in CONTINENTS.items():
        fill = (40, 140 + rng.randint(-20, 20), 50) if name == names[0] else (225, 215, 190)
        draw.polygon([(x + dx, y + dy) for x, y in polygon], fill=fill)
    return Drawn("Which continent is highlighted?", names, image, "social science", "geography",
                 "Oceans and continents", "Identify oceans and continents",
                 lecture="A continent is one of the major land masses on the earth. Most people say there are "
                         "seven continents.", solution=f"This continent is {names[0]}.",
                 grades=["grade5", "grade7"])


def _star(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    import math

    return [(cx + (r if i % 2 == 0 else r / 2.5) * math.sin(i * math.pi / 5),
             cy - (r if i % 2 == 0 else r / 2.5) * math.cos(i * math.pi / 5)) for i in range(10)]


def shape_word(rng: random.Random) -> Drawn:
    """Language science: 'Which word matches the picture?' with one drawn shape."""
    words = rng.sample(["circle", "square", "triangle", "star"], 3)
    image, draw = _canvas()
    color, r = _shade(rng, rng.choice(sorted(COLORS))), rng.randint(55, 80)
    c = SIZE / 2 + rng.randint(-15, 15)
    outline = {"circle": None, "square": None, "triangle": [(c, c - r), (c + r, c + r * 0.8), (c - r, c + r * 0.8)],
               "star": _star(c, c, r * 1.2)}
    if words[0] == "circle":
        draw.ellipse((c - r, c - r, c + r, c + r), fill=color)
    elif words[0] == "square":
        draw.rectangle((c - r * 0.85, c - r * 0.85, c + r * 0.85, c + r * 0.85), fill=color)
    else:
        draw.polygon(outline[words[0]], fill=color)
    return Drawn("Which word matches the picture?", words, image, "language science", "word-study",
                 "Domain-specific vocabulary", "Determine the meaning of words with pictures",
                 hint="Look at the picture.", solution=f"The picture shows a {words[0]}.")


def magnets(rng: random.Random) -> Drawn:
    """Two bar magnets; attract iff the facing poles differ (a relation, not a global property)."""
    first, second = rng.choice(["NS", "SN"]), rng.choice(["NS", "SN"])
    answer = "attract" if first[1] != second[0] else "repel"
    image, draw = _canvas()
    y, gap = rng.randint(60, 130), rng.randint(10, 30)
    for x0, poles in ((12, first), (12 + 82 + gap, second)):
        for i, pole in enumerate(poles):
            box = (x0 + 41 * i, y, x0 + 41 * (i + 1), y + 40)
            draw.rectangle(box, fill=_shade(rng, "red" if pole == "N" else "blue", 15))
            draw.text((box[0] + 16, y + 14), pole, fill=(255, 255, 255))
    return Drawn("Will these magnets attract or repel each other?", [answer, "repel" if answer == "attract" else
                 "attract"], image, "natural science", "physics", "Magnets", "Identify magnets that attract or repel",
                 hint="Two magnets are placed as shown.\n\nHint: Magnets that attract pull together. Magnets that "
                      "repel push apart.",
                 solution=f"The facing poles are {first[1]} and {second[0]}, so the magnets {answer}.",
                 grades=["grade2", "grade3"])


NAMES = ["Ana", "Ben", "Chloe", "Dev", "Eli", "Fatima", "Gus", "Hana"]


def hint_color(rng: random.Random, answer: str | None = None) -> Drawn:
    """TXT: the answer is in the context hint, there is no image; ``answer``: the colour to ask about (drawn if None;
    the audio set passes it to balance its answers)."""
    if answer is None:
        names = rng.sample(sorted(COLORS), 3)
    else:
        names = [answer, *rng.sample(sorted(set(COLORS) - {answer}), 2)]
    who, thing = rng.choice(NAMES), rng.choice(["kite", "bike", "scarf", "umbrella", "backpack"])
    return Drawn(f"What color is {who}'s {thing}?", names, None, "language science", "reading-comprehension",
                 "Reading comprehension", "Find details in a text",
                 hint=f"Read the text. {who} has a {names[0]} {thing}. {who} uses it every day.",
                 solution=f"The text says that the {thing} is {names[0]}.")


WORDS = sorted(["apple", "banana", "candle", "dragon", "eagle", "forest", "garden", "harbor", "island", "jacket",
                "kitten", "lemon", "meadow", "needle", "orange", "pepper", "quilt", "river", "saddle", "tiger",
                "umpire", "valley", "walrus", "yellow", "zebra"])


def guide_words(rng: random.Random) -> Drawn:
    """NO: neither hint nor image; answerable from alphabetical order alone."""
    i = rng.randint(0, len(WORDS) - 6)
    first, inside, last = WORDS[i], WORDS[i + rng.randint(1, 3)], WORDS[i + 4]
    outside = rng.choice(WORDS[:i] + WORDS[i + 5:])
    return Drawn(f"Which word would you find on a dictionary page with the following guide words?\n{first} - {last}",
                 [inside, outside], None, "language science", "reference-skills", "Reference skills",
                 "Use guide words", lecture="Guide words appear on each page of a dictionary: the first word and "
                 "the last word on the page. Other words on the page come between them in alphabetical order.",
                 solution=f"{inside} is between the guide words {first} - {last}.")


CANDIDATES: dict[str, Callable[[random.Random], Drawn]] = {
    "solution_color": solution_color, "concentration": concentration, "continent": continent,
    "shape_word": shape_word, "magnets": magnets}
# Kept image families (weights). Linear probe, random-weight ViT-B-32, 4 depths, 400 jittered pictures each
# (python -m bench.probe_synthetic; held-out accuracy vs majority baseline): solution_color 6 classes 1.00 vs 0.19,
# continent 7 classes 1.00 vs 0.18, shape_word 4 classes 0.81 vs 0.28, concentration 3 classes 0.79 vs 0.37;
# magnets 0.53 vs 0.54 (chance: which poles face each other is a relation global features lose), so not kept.
IMAGE_FAMILIES = {"solution_color": 1.0, "concentration": 1.0, "continent": 1.0, "shape_word": 1.0}
TEXT_FAMILIES = {"hint_color": hint_color, "guide_words": guide_words}
TEXT_SHARE = 0.15  # of all problems: half TXT (hint_color), half NO (guide_words)


def to_record(drawn: Drawn, rng: random.Random, family: str, media: str | None, answer_at: int | None = None) -> dict:
    """The official-format record of a drawn problem (answer shuffled with ``rng``); ``media``: its file name;
    ``answer_at``: where the answer goes (the other choices still shuffled), for a generator that balances positions."""
    order = list(range(len(drawn.choices)))
    rng.shuffle(order)
    if answer_at is not None:
        order.remove(0)
        order.insert(answer_at, 0)
    return {"question": drawn.question, "choices": [drawn.choices[i] for i in order], "answer": order.index(0),
            "hint": drawn.hint, "image": media, "task": "closed choice",
            "grade": rng.choice(drawn.grades), "subject": drawn.subject, "topic": drawn.topic,
            "category": drawn.category, "skill": drawn.skill, "lecture": drawn.lecture,
            "solution": drawn.solution, "family": family}


def make_problem(rng: random.Random, family: str) -> tuple[dict, Image.Image | None]:
    """One official-format record (answer shuffled with ``rng``) and its picture."""
    drawn = (CANDIDATES.get(family) or TEXT_FAMILIES[family])(rng)
    return to_record(drawn, rng, family, "image.png" if drawn.image else None), drawn.image


def choose_family(rng: random.Random, families: dict[str, float] = IMAGE_FAMILIES) -> str:
    """A text family (``TEXT_SHARE`` of draws), else one of ``families`` by weight."""
    if rng.random() < TEXT_SHARE:
        return rng.choice(sorted(TEXT_FAMILIES))
    names = sorted(families)
    return rng.choices(names, weights=[families[n] for n in names])[0]


SaveMedia = Callable[[Path], None]  # writes a problem's media file into its folder
DrawProblem = Callable[[random.Random], tuple[dict, SaveMedia | None]]


def draw_image_problem(rng: random.Random) -> tuple[dict, SaveMedia | None]:
    """A problem of this set and the writer of its image.png (None for a text-only problem)."""
    record, image = make_problem(rng, choose_family(rng))
    if image is None:
        return record, None
    return record, lambda folder: image.save(folder / "image.png", optimize=False, compress_level=1)


def refuse_non_empty(out: Path, overwrite: bool) -> None:
    """A generated set goes into a new or empty folder, or, with ``overwrite``, any folder (one line otherwise)."""
    if out.exists() and not out.is_dir():
        raise ScienceQAError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ScienceQAError(f"{out}: folder is not empty; pass --overwrite to write into it")


def generate(out_dir: str | Path, sizes: dict[str, int], seed: int = 0, overwrite: bool = False,
             draw: DrawProblem = draw_image_problem) -> Path:
    """Write problems.json, pid_splits.json and each problem's media (images/<split>/<pid>/image.png) under
    ``out_dir``; ``draw`` makes the problems (another set, e.g. ``synthetic_video``, passes its own). A record's
    ``caption`` key, where a set gives one, goes to captions.json (the official file) instead of problems.json."""
    out = Path(out_dir)
    refuse_non_empty(out, overwrite)
    rng = random.Random(seed)
    problems, splits, captions, pid = {}, {}, {}, 0
    for split, count in sizes.items():
        splits[split] = []
        for _ in range(count):
            pid += 1
            record, save = draw(rng)
            record["split"] = split
            if record.get("caption") is not None:
                captions[str(pid)] = record.pop("caption")
            problems[str(pid)] = record
            splits[split].append(str(pid))
            if save is not None:
                folder = out / "images" / split / str(pid)
                folder.mkdir(parents=True, exist_ok=True)
                save(folder)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "problems.json", problems, indent=1)
    if captions:
        atomic_write_json(out / "captions.json", {"captions": captions}, indent=1)
    atomic_write_json(out / "pid_splits.json", splits)  # last: its presence marks a complete set
    return out
