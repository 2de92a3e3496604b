"""Per-family linear probe of the generated video set: ordered frames vs shuffled frames vs the middle frame.

A video family is worth training on only if random-weight CLIP features carry its answer, and a temporal one
only if they carry it *through the frames' order*. For each candidate family in ``scienceqa.synthetic_video``
this draws N clips, encodes K uniformly sampled frames of each through the visual path (``image_features``
with ``frames=K``: multi-scale features, one cache entry per frame) and fits the image probe's
LogisticRegression (``bench.probe_synthetic.probe``: stratified 75%, accuracy on 25%) on:

* frame: what one frame shows (its colour, the lamp on or off), from that frame's features alone;
* ordered: the answer, from the K frames' features side by side in time order (what the projection sees);
* shuffled: the same with each clip's frames in its fixed random order (``--frame-order shuffled``);
* middle: the answer from the middle frame alone (``--frames 1``).

A family is kept if ordered >= baseline + margin; a temporal one also needs ordered >= shuffled + margin.

    python -m bench.probe_video --clip-model ViT-B-32 --n 200 --frames 8 --threads 1
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time

import numpy as np
import torch

from bench.probe_synthetic import probe
from mm_adapter.encoders.clip import ClipEncoder, build_encoder
from mm_adapter.encoders.config import VisualConfig
from mm_adapter.encoders.feature_cache import FeatureCache, image_features
from mm_adapter.encoders.video import sample_indices
from mm_adapter.scienceqa.synthetic_video import CANDIDATES, TEMPORAL, VIDEO_FAMILIES, clip_bytes


def family_features(encoder: ClipEncoder, family: str, n: int, frames: int, seed: int, cache: FeatureCache) -> dict:
    """Answers, per-frame labels and the three feature views of ``n`` clips of ``family``."""
    rng = random.Random(seed)
    clips = [CANDIDATES[family](rng) for _ in range(n)]
    data = [clip_bytes(clip.frames) for clip in clips]
    views = {order: image_features(encoder, data, cache=cache, frames=frames, order=order).features.numpy()
             for order in ("ordered", "shuffled")}
    middle = image_features(encoder, data, cache=cache, frames=1).features.numpy()
    labels = [clip.labels[i] for clip in clips for i in sample_indices(len(clip.labels), frames)]
    return {"answers": [clip.drawn.choices[0] for clip in clips], "frame_labels": labels,
            "frame_features": views["ordered"].reshape(n * frames, -1),
            "ordered": views["ordered"].reshape(n, -1), "shuffled": views["shuffled"].reshape(n, -1),
            "middle": middle}


def verdict(family: str, scores: dict[str, float], baseline: float, margin: float) -> str:
    readable = scores["ordered"] >= baseline + margin
    if family in TEMPORAL:
        readable = readable and scores["ordered"] >= scores["shuffled"] + margin
    return "readable" if readable else "NOT readable"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip-model", default="ViT-B-32")
    parser.add_argument("--clip-layers", "--layers", dest="layers", type=int, default=4,
                        help="evenly spaced depths (multi-scale features)")
    parser.add_argument("--n", type=int, default=200, help="clips per family")
    parser.add_argument("--frames", type=int, default=8, help="frames sampled per clip (K)")
    parser.add_argument("--families", nargs="*", default=sorted(CANDIDATES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 on a shared machine)")
    parser.add_argument("--margin", type=float, default=0.25, help="keep if accuracy >= baseline (and, for a "
                        "temporal family, shuffled) + margin")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    encoder = build_encoder(VisualConfig(clip_model=args.clip_model, clip_layers=args.layers, clip_seed=args.seed))
    print(f"encoder {args.clip_model} (random weights), depths {encoder.depths}, {encoder.feature_dim} features; "
          f"{args.n} clips per family, {args.frames} frames each; LogisticRegression on 75%, accuracy on 25%")
    print(f"{'family':<14}{'classes':>8}{'baseline':>10}{'frame':>7}{'ordered':>9}{'shuffled':>10}{'middle':>8}  "
          f"{'verdict':<14}{'kept':<6}seconds")
    with tempfile.TemporaryDirectory() as folder:
        cache = FeatureCache(encoder, folder)  # the shuffled view reads the ordered view's frames
        for family in args.families:
            start = time.time()
            found = family_features(encoder, family, args.n, args.frames, args.seed, cache)
            frame_accuracy, _ = probe(found["frame_features"], found["frame_labels"], args.seed)
            scores = {view: probe(found[view], found["answers"], args.seed)[0]
                      for view in ("ordered", "shuffled", "middle")}
            baseline = probe(np.zeros((args.n, 1)), found["answers"], args.seed)[1]
            kept = "yes" if family in VIDEO_FAMILIES else "no"
            print(f"{family:<14}{len(set(found['answers'])):>8}{baseline:>10.2f}{frame_accuracy:>7.2f}"
                  f"{scores['ordered']:>9.2f}{scores['shuffled']:>10.2f}{scores['middle']:>8.2f}  "
                  f"{verdict(family, scores, baseline, args.margin):<14}{kept:<6}{time.time() - start:>6.0f}",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
