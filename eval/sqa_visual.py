"""ScienceQA with images: features per problem, training examples that carry them, the loss, eval offsets.

Image features are computed once, before training, through the on-disk feature cache
(``mm_adapter.feature_cache``), and stored on each example as ``image_features`` + ``image_mask``;
epochs never run the encoder. The trainable projection hangs on the model as
``model.visual_projection`` so the trainer optimises it, checkpoints it and restores it on resume
like any other parameter that requires grad. A problem without a (usable) image has mask False:
the projection gives it an offset of exactly 0, so it is answered as by the text-only adapter.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from mm_adapter.adapter import prompt_offset
from mm_adapter.errors import MMAdapterError
from mm_adapter.feature_cache import ImageInput, image_features
from mm_adapter.train import lm_loss_sum
from mm_adapter.train_data import Example
from mm_adapter.visual import ClipEncoder, VisualConfig, VisualProjection, visual_extras
from scienceqa.data import Problem, image_path

PROJECTION_ATTR = "visual_projection"


def problem_image(problem: Problem, root: str | Path | None) -> ImageInput:
    """The image of a problem: HF-layout bytes, the official-layout file under ``root``, or None."""
    if problem.image_bytes is not None:
        return problem.image_bytes
    if problem.image is None or root is None:
        return None
    return image_path(problem, root)


@dataclass
class ProblemFeatures:
    """Encoder features of problems by pid; problems absent here have no (usable) image."""

    by_pid: dict[str, torch.Tensor]
    dim: int
    skipped: list[str] = field(default_factory=list)

    def rows(self, problems: Sequence[Problem]) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, dim) features (zeros where no image) and a (batch,) bool mask."""
        zero = torch.zeros(self.dim)
        features = torch.stack([self.by_pid.get(p.pid, zero) for p in problems])
        return features, torch.tensor([p.pid in self.by_pid for p in problems])

    def fingerprint(self, problems: Sequence[Problem]) -> str:
        """Hash of the features in problem order: part of a run's identity, so resume sees the same images."""
        digest = hashlib.sha256()
        features, mask = self.rows(problems)
        digest.update(features.numpy().tobytes())
        digest.update(mask.numpy().tobytes())
        return digest.hexdigest()[:16]


def compute_features(encoder: ClipEncoder, problems: Sequence[Problem], root: str | Path | None,
                     skip_bad: bool = False, batch_size: int = 32) -> ProblemFeatures:
    """Features of every problem's image, through the disk cache (encoder runs only on cache misses).

    A missing or damaged image is one ``MMAdapterError`` line naming it, or with ``skip_bad`` the
    problem is kept as a problem without an image and the reason is listed in ``skipped``.
    """
    images = [problem_image(p, root) for p in problems]
    names = [f"problem {p.pid} (image bytes)" if p.image_bytes is not None else None for p in problems]
    try:
        found = image_features(encoder, images, cache=True, on_error="skip" if skip_bad else "raise",
                               batch_size=batch_size, names=names)
    except MMAdapterError as error:
        raise MMAdapterError(f"{error} (pass --skip-bad-images to treat it as a problem without an image)") from None
    by_pid = {p.pid: found.features[i] for i, p in enumerate(problems) if found.mask[i]}
    return ProblemFeatures(by_pid, encoder.feature_dim, found.skipped)


def report_skipped(features: ProblemFeatures, what: str, stream=sys.stderr) -> None:
    """One line saying how many bad images became no-image problems (and the first reason)."""
    if features.skipped:
        print(f"{what}: {len(features.skipped)} bad image(s) skipped, those problems have no image "
              f"(first: {features.skipped[0]})", file=stream)


def with_features(examples: Sequence[Example], problems: Sequence[Problem],
                  features: ProblemFeatures) -> list[dict]:
    """Copies of ``examples`` carrying ``image_features`` (dim,) and ``image_mask`` () for the collator."""
    rows, mask = features.rows(problems)
    return [{**example, "image_features": rows[i], "image_mask": mask[i]} for i, example in enumerate(examples)]


def attach_projection(model: nn.Module, projection: VisualProjection, lr_scale: float = 1.0) -> VisualProjection:
    """Make the projection a trainable submodule of ``model`` (optimised, checkpointed, restored on resume).

    Learning rates (``train.build_optimizer`` reads ``lr_scale``): Adam's early steps move a unit's
    pre-activation by about lr x fan_in x |input|, so the widest layer (thousands of features) gets
    ``lr x lr_scale`` and each Linear ``lr x lr_scale x widest fan_in / its fan_in`` (capped at lr):
    every layer's output then moves at a similar pace. Norm parameters go with the widest layer.
    """
    linears = [m for m in projection.modules() if isinstance(m, nn.Linear)]
    widest = max(m.in_features for m in linears)
    for parameter in projection.parameters():
        parameter.lr_scale = lr_scale
    for layer in linears:
        for parameter in layer.parameters():
            parameter.lr_scale = min(1.0, lr_scale * widest / layer.in_features)
    setattr(model, PROJECTION_ATTR, projection.requires_grad_(True))
    return projection


def multimodal_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``lm_loss_sum`` with each row's projected image features added to every adaption prompt."""
    offsets = getattr(model, PROJECTION_ATTR)(batch["image_features"], batch["image_mask"])
    with prompt_offset(model, offsets):
        return lm_loss_sum(model, batch)


@dataclass
class ImageOffsets:
    """``eval.run`` offsets: a batch of problems -> their projected features (rows of 0 without an image)."""

    projection: VisualProjection
    features: ProblemFeatures

    @torch.no_grad()
    def __call__(self, problems: Sequence[Problem]) -> torch.Tensor:
        rows, mask = self.features.rows(problems)
        device = next(self.projection.parameters()).device
        return self.projection(rows.to(device), mask.to(device))


@dataclass
class VisualExport:
    """What an adapter file needs besides prompts and gates: the projection, config and encoder identity."""

    config: VisualConfig
    projection: VisualProjection
    encoder: ClipEncoder

    def extras(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        return visual_extras(self.config, self.projection, self.encoder)
