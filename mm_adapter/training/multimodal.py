"""Training with images: the projection as a trainable part of the model, its learning rates, its loss.

Image features are computed once, before training (``feature_cache``), and ride on each example
as ``image_features`` + ``image_mask``; epochs never run the encoder. The trainable projection
hangs on the model as ``model.visual_projection`` (a sound's, beside it, as ``model.audio_projection``) so the
trainer optimises it, checkpoints it and restores it on resume like any other parameter that requires grad. A row
without a (usable) image has mask False: the projection gives it an offset of exactly 0, so it is answered as by
the text-only adapter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from mm_adapter.encoders.audio.config import AudioConfig
from mm_adapter.encoders.audio.whisper import WhisperAudioEncoder
from mm_adapter.encoders.clip import ClipEncoder
from mm_adapter.encoders.config import VisualConfig
from mm_adapter.encoders.projection import VisualProjection, visual_extras
from mm_adapter.model.adapter import adaption_prompts, prompt_offset
from mm_adapter.training.trainer import lm_loss_sum

PROJECTION_ATTR = "visual_projection"
AUDIO_PROJECTION_ATTR = "audio_projection"  # the sound's projection, beside the image's


def attach_projection(model: nn.Module, projection: VisualProjection, attr: str = PROJECTION_ATTR) -> VisualProjection:
    """Make the projection a trainable submodule of ``model`` (optimised, checkpointed, restored on resume)."""
    setattr(model, attr, projection.requires_grad_(True))
    return projection


def projection_lr_scales(projection: VisualProjection, lr_scale: float) -> dict[nn.Parameter, float]:
    """Per-parameter lr multipliers for ``train(..., lr_scales=...)``.

    Adam's early steps move a unit's pre-activation by about lr x fan_in x |input|, so the widest
    layer (thousands of features) gets ``lr x lr_scale`` and each Linear ``lr x lr_scale x widest
    fan_in / its fan_in`` (capped at lr): every layer's output then moves at a similar pace. Norm
    parameters go with the widest layer. At the prompts' lr the first layer's GELU units all died.
    """
    linears = [m for m in projection.modules() if isinstance(m, nn.Linear)]
    widest = max(m.in_features for m in linears)
    scales = {parameter: lr_scale for parameter in projection.parameters()}
    for layer in linears:
        for parameter in layer.parameters():
            scales[parameter] = min(1.0, lr_scale * widest / layer.in_features)
    return scales


def batch_offsets(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Each row's prompt offset: its projected image features, plus its projected sound's when the run has sound."""
    offsets = None
    for attr, kind in ((PROJECTION_ATTR, "image"), (AUDIO_PROJECTION_ATTR, "audio")):
        if f"{kind}_features" in batch and hasattr(model, attr):
            part = getattr(model, attr)(batch[f"{kind}_features"], batch[f"{kind}_mask"])
            offsets = part if offsets is None else offsets + part
    return offsets


def multimodal_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``lm_loss_sum`` with each row's projected image (and sound) features added to every adaption prompt."""
    offsets = batch_offsets(model, batch)
    with prompt_offset(model, offsets):
        return lm_loss_sum(model, batch)


def visual_parameters(model: nn.Module) -> list[nn.Parameter]:
    """LLaMA-Adapter V2's image-side parameters: the projection, and the prompts and gates of the adapted layers the
    images reach (the early ones, ``AdapterV2Config.fusion_layers``)."""
    prompts = [p for module in adaption_prompts(model).values() if module.visual for p in (module.prompt, module.gate)]
    return [*getattr(model, PROJECTION_ATTR).parameters(), *prompts]


def disjoint_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """:func:`multimodal_loss` trained as LLaMA-Adapter V2's joint training with disjoint parameters: rows with an
    image reach only the visual parameters (:func:`visual_parameters`), rows without one only the rest (the later
    prompts and gates, biases, scales, norms), so image questions cannot disturb what text teaches and the reverse.
    The value is :func:`multimodal_loss`'s (two forwards over the two groups of rows; only the routes differ)."""
    visual = {id(p) for p in visual_parameters(model)}
    trainable = [p for p in model.parameters() if p.requires_grad]
    with_image = batch["image_mask"].reshape(len(batch["image_mask"]), -1).bool().any(dim=1)
    total = None
    for rows, held in ((with_image, [p for p in trainable if id(p) not in visual]),
                       (~with_image, [p for p in trainable if id(p) in visual])):
        if not rows.any():
            continue
        for parameter in held:
            parameter.requires_grad_(False)  # this forward records no route to them
        try:
            part = multimodal_loss(model, {key: value[rows] for key, value in batch.items()})
        finally:
            for parameter in held:
                parameter.requires_grad_(True)
        total = part if total is None else total + part
    return total


@dataclass
class PartExport:
    """What an adapter file needs besides prompts and gates, for one media part (the image's or the sound's): its
    projection, config and encoder identity, written by that part's ``extras`` function."""

    config: VisualConfig | AudioConfig
    projection: VisualProjection
    encoder: ClipEncoder | WhisperAudioEncoder
    write: Callable = visual_extras  # visual_extras or audio_extras

    def extras(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        return self.write(self.config, self.projection, self.encoder)
