"""Per-family linear probe: can random-weight CLIP features tell the answer of a synthetic family?

A family is worth training on only if its answer survives the frozen encoder's global features.
For each candidate family in ``scienceqa.synthetic`` this draws N pictures, encodes them with the
visual path's multi-scale features, fits sklearn's LogisticRegression on a stratified 75% and
prints the held-out accuracy next to the majority-class baseline.

    python -m bench.probe_synthetic --clip-model ViT-B-32 --n 600
"""

from __future__ import annotations

import argparse
import io
import random
import time

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mm_adapter.encoders.clip import build_encoder
from mm_adapter.encoders.config import VisualConfig
from mm_adapter.encoders.feature_cache import image_features
from mm_adapter.scienceqa.synthetic import CANDIDATES, IMAGE_FAMILIES


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def linear_probe():
    """The probe every feature benchmark fits: standardised features, L2-regularised logistic regression."""
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=0.5))


def probe(features: np.ndarray, labels: list[str], seed: int) -> tuple[float, float]:
    """(held-out accuracy, majority-class baseline on the same held-out part)."""
    x_train, x_test, y_train, y_test = train_test_split(features, labels, test_size=0.25, random_state=seed,
                                                        stratify=labels)
    model = linear_probe()
    model.fit(x_train, y_train)
    majority = max(set(y_train), key=list(y_train).count)
    return float(model.score(x_test, y_test)), float(np.mean(np.array(y_test) == majority))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip-model", default="ViT-B-32")
    parser.add_argument("--clip-layers", "--layers", dest="layers", type=int, default=4,
                        help="evenly spaced depths (multi-scale features)")
    parser.add_argument("--n", type=int, default=600, help="images per family")
    parser.add_argument("--families", nargs="*", default=sorted(CANDIDATES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--margin", type=float, default=0.25, help="keep if accuracy >= baseline + margin")
    args = parser.parse_args(argv)
    encoder = build_encoder(VisualConfig(clip_model=args.clip_model, clip_layers=args.layers, clip_seed=args.seed))
    print(f"encoder {args.clip_model} (random weights), depths {encoder.depths}, {encoder.feature_dim} features; "
          f"{args.n} images per family, LogisticRegression on 75%, accuracy on 25%")
    print(f"{'family':<16}{'classes':>8}{'baseline':>10}{'probe':>8}  {'verdict':<14}{'kept':<6}seconds")
    for family in args.families:
        rng, start = random.Random(args.seed), time.time()
        drawn = [CANDIDATES[family](rng) for _ in range(args.n)]
        labels = [d.choices[0] for d in drawn]
        features = image_features(encoder, [png_bytes(d.image) for d in drawn], cache=False).features.numpy()
        accuracy, baseline = probe(features, labels, args.seed)
        verdict = "readable" if accuracy >= baseline + args.margin else "NOT readable"
        kept = "yes" if family in IMAGE_FAMILIES else "no"
        print(f"{family:<16}{len(set(labels)):>8}{baseline:>10.2f}{accuracy:>8.2f}  {verdict:<14}{kept:<6}"
              f"{time.time() - start:>6.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
