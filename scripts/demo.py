"""Answer one multiple-choice question about an image; print the chosen option and every option's probability.

    python scripts/demo.py --image beakers.png --question "Which solution has a higher concentration?" \
        --choices "Solution A" "Solution B" --adapter runs/sqa_mm.safetensors

Without --adapter (or with a text-only one) the image is checked but ignored, and the output says so.
Bad input (an image that is not one, truncated or too large, fewer than 2 choices, an adapter whose
image encoder cannot be built) is one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval.predictor import Prediction, Predictor, check_image, check_question  # noqa: E402
from eval.table import _Parser  # noqa: E402  (one-line argument errors, as in every entry point)
from mm_adapter.base import DEFAULT_SPEC  # noqa: E402
from scienceqa.prompts import option_letters  # noqa: E402
from scripts._cli import run  # noqa: E402

BAR_WIDTH = 40


def build_parser() -> _Parser:
    p = _Parser(prog="scripts/demo.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--image", type=Path, help="image file (PNG, JPEG, ...); omit for a text-only question")
    p.add_argument("--question", required=True)
    p.add_argument("--choices", nargs="+", required=True, metavar="CHOICE", help="two or more options")
    p.add_argument("--context", default="", help="optional hint text shown with the question")
    p.add_argument("--base", default=DEFAULT_SPEC, help="base model spec (see mm_adapter.load_base)")
    p.add_argument("--adapter", type=Path, help="adapter file (.safetensors); a multimodal one uses the image")
    p.add_argument("--format", help="prompt format (default: the one the adapter file records, else QCM-A; QCM-T answers by option text)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p


def format_prediction(prediction: Prediction) -> str:
    """The answer line, one line per option (probability and a bar; '*' marks the answer), then any note."""
    letters = option_letters(len(prediction.choices))
    width = max(len(choice) for choice in prediction.choices)
    lines = [f"Answer: ({prediction.letter}) {prediction.text}"]
    for i, (letter, choice, p) in enumerate(zip(letters, prediction.choices, prediction.probabilities)):
        mark = "*" if i == prediction.choice_index else " "
        lines.append(f"{mark} ({letter}) {choice:<{width}}  {p:6.1%}  {'#' * round(p * BAR_WIDTH)}")
    if prediction.note:
        lines.append(f"Note: {prediction.note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_question(args.question, args.choices)  # bad input fails before the model is loaded
    check_image(args.image)
    predictor = Predictor.load(args.base, args.adapter, args.device, args.format)
    print(predictor.describe(), file=sys.stderr)
    prediction = predictor.predict(args.image, args.question, args.choices, args.context)
    print(format_prediction(prediction))
    return 0


if __name__ == "__main__":
    run(main)
