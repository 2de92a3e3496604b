"""Generated ScienceQA-format sets (``mm-adapter data synthetic-images``, ``... synthetic-video``,
``... synthetic-audio``, and ``... spoken-context``: real problems with their context read aloud).

The generators live on the benchmark side (``mm_adapter.scienceqa.synthetic``, ``...synthetic_video``,
``...synthetic_audio``); these jobs are their one way in from the command line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mm_adapter.data.config import SpokenContextConfig, SyntheticDataConfig
from mm_adapter.scienceqa.synthetic import DrawProblem, draw_image_problem, generate
from mm_adapter.scienceqa.synthetic_video import draw_clip_problem


@dataclass
class SyntheticDataResult:
    out: Path
    sizes: dict[str, int]


def _generate(config: SyntheticDataConfig, draw: DrawProblem) -> SyntheticDataResult:
    """Write the set; ``generate`` refuses a non-empty folder before drawing anything."""
    sizes = {"train": config.n_train, "val": config.n_val, "test": config.n_test}
    return SyntheticDataResult(generate(config.out, sizes, config.seed, config.overwrite, draw), sizes)


def synthetic_images(config: SyntheticDataConfig) -> SyntheticDataResult:
    """Problems whose answer is visible only in the image (``scienceqa.synthetic``)."""
    return _generate(config, draw_image_problem)


def synthetic_video(config: SyntheticDataConfig) -> SyntheticDataResult:
    """Problems about short clips whose answer needs the order of the frames (``scienceqa.synthetic_video``)."""
    return _generate(config, draw_clip_problem)


def synthetic_audio(config: SyntheticDataConfig) -> SyntheticDataResult:
    """Problems whose answer is only in a recording, audio.wav (``scienceqa.synthetic_audio``). Speech synthesis is
    tried on one word first, so a missing eSpeak NG is one line before anything is written."""
    from mm_adapter.scienceqa.synthetic_audio import AudioDraw

    draw = AudioDraw()
    draw.check()
    return _generate(config, draw)


def spoken_context(config: SpokenContextConfig) -> SyntheticDataResult:
    """Real ScienceQA text problems twice, context spoken (audio.wav) and written (``scienceqa.spoken_context``);
    the source is read and checked and a word is said before anything is written."""
    from mm_adapter.scienceqa.spoken_context import generate_spoken_context

    sizes = generate_spoken_context(config.data, config.out, config.splits, config.seed, config.overwrite)
    return SyntheticDataResult(Path(config.out), sizes)
