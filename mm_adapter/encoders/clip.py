"""The image encoder: a frozen open_clip ViT and its multi-scale global features.

LLaMA-Adapter's multimodal variant adds one projected image vector to every adaption prompt of
every adapted layer (``adapter.prompt_offset``); this module makes the features, ``projection.py``
projects them. Features: the class token after each of ``depths`` resblocks of the frozen visual
transformer (open_clip's own ``forward_intermediates``), each put through a LayerNorm *without*
parameters, then concatenated -> (batch, n_depths * width). Why not ``ln_post``: its affine was
trained for the last block only, while the residual stream's scale grows with depth; a
parameter-free per-depth norm puts every depth on one scale so no depth dominates the concatenation.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import sys

import torch
import torch.nn.functional as F
from torch import nn

from mm_adapter.encoders.config import ALLOW_DOWNLOAD_ENV, VisualConfig
from mm_adapter.errors import MMAdapterError

FEATURE_VERSION = 1  # bump when the feature recipe changes: it is part of the cache key
TINY_VIT = "mm-tiny-vit"  # a 2-block, width-64 ViT for fast tests and CPU smoke runs
_TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}
_LIST_HINT = "python -c 'import open_clip; print(open_clip.list_models())'"


def _open_clip():
    """open_clip, imported when an image encoder is built or described: it costs ~1.2 s at start-up, which a
    text-only command (and every module that only names a VisualConfig) should not pay."""
    import open_clip

    return open_clip


def _downloads_allowed(allow_download: bool | None = None) -> bool:
    return allow_download if allow_download is not None else os.environ.get(ALLOW_DOWNLOAD_ENV) == "1"


def clip_model_config(name: str, allow_download: bool | None = None) -> dict:
    """open_clip's architecture config for ``name`` (no weights; network only for an allowed hf-hub: name)."""
    if name.startswith("hf-hub:") and not _downloads_allowed(allow_download):
        raise MMAdapterError(f"CLIP model {name!r} would be downloaded from the hub; use a built-in name with a "
                             f"local checkpoint file, or set {ALLOW_DOWNLOAD_ENV}=1")
    if name == TINY_VIT and TINY_VIT not in _open_clip().factory._MODEL_CONFIGS:
        _open_clip().factory._MODEL_CONFIGS[TINY_VIT] = _TINY_CONFIG
    try:
        config = _open_clip().get_model_config(name)
    except (OSError, ValueError) as error:
        raise MMAdapterError(f"CLIP model {name!r}: cannot read its config ({error})") from None
    if config is None:
        raise MMAdapterError(f"unknown CLIP model {name!r}; list valid names with: {_LIST_HINT}")
    vision = config.get("vision_cfg", {})
    if "timm_model_name" in vision or isinstance(vision.get("layers"), (list, tuple)):
        raise MMAdapterError(f"CLIP model {name!r} has no open_clip ViT image tower; choose a ViT-* model")
    return config


def resolve_depths(layers: int | tuple[int, ...], num_blocks: int, what: str = "visual") -> list[int]:
    """1-based depths: n -> n evenly spaced ending at the last block (24 blocks, 4 -> 6 12 18 24)."""
    if isinstance(layers, int):
        if layers > num_blocks:
            raise MMAdapterError(f"{what} layers={layers} but the encoder has only {num_blocks} blocks")
        return sorted({round(num_blocks * (i + 1) / layers) for i in range(layers)})
    bad = [d for d in layers if d > num_blocks]
    if bad:
        raise MMAdapterError(f"{what} depths {bad} exceed the encoder's {num_blocks} blocks")
    return sorted(set(layers))


def feature_dim(config: VisualConfig) -> int:
    """Width of the concatenated features, from the architecture config alone (works for meta counts)."""
    vision = clip_model_config(config.clip_model)["vision_cfg"]
    return len(resolve_depths(config.clip_layers, vision["layers"])) * vision["width"]


def _refuse_download(config: VisualConfig, allow_download: bool | None) -> None:
    """A tag or hub name would go to the network: refuse unless explicitly allowed."""
    allowed = _downloads_allowed(allow_download)
    if config.clip_pretrained is None or os.path.isfile(config.clip_pretrained):
        return
    tags = _open_clip().list_pretrained_tags_by_model(config.clip_model)
    if config.clip_pretrained not in tags:
        raise MMAdapterError(f"pretrained {config.clip_pretrained!r} is neither a file nor a tag of "
                             f"{config.clip_model} (tags: {', '.join(tags) or 'none'})")
    if not allowed:
        raise MMAdapterError(f"pretrained tag {config.clip_pretrained!r} of {config.clip_model} needs a download; pass a "
                             f"local checkpoint file as pretrained, or set {ALLOW_DOWNLOAD_ENV}=1 to allow it")


def weights_fingerprint(module: nn.Module, samples: int = 1024) -> str:
    """Hash of a strided sample of every parameter: the encoder's identity for the feature cache.

    It tells apart tags, checkpoint files and random seeds (and torch versions whose random init
    differs) without hashing a 1.7 GB file.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        flat = tensor.detach().reshape(-1).float()
        step = max(1, flat.numel() // samples)
        digest.update(name.encode())
        digest.update(flat[::step][:samples].cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


class ClipEncoder(nn.Module):
    """Frozen open_clip visual tower returning multi-scale class-token features (batch, feature_dim)."""

    def __init__(self, config: VisualConfig, visual: nn.Module, preprocess, random_weights: bool):
        super().__init__()
        self.config = config
        self.visual = visual.eval().requires_grad_(False)
        self.preprocess = preprocess  # open_clip's own eval transform (resize, crop, RGB, normalise)
        self.random_weights = random_weights
        self.depths = resolve_depths(config.clip_layers, len(visual.transformer.resblocks))
        self.width = visual.transformer.width
        self.feature_dim = len(self.depths) * self.width
        key = {"model": config.clip_model, "depths": self.depths, "version": FEATURE_VERSION,
               "weights": weights_fingerprint(self.visual), "preprocess": repr(preprocess)}
        self.identity = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
        self.calls = 0  # forward batches run; the feature cache's tests count these
        self.images_encoded = 0

    def train(self, mode: bool = True) -> "ClipEncoder":
        return super().train(False)  # frozen: dropout/patch-dropout stay off

    @property
    def device(self) -> torch.device:
        return self.visual.conv1.weight.device

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels: (batch, 3, H, W) from ``self.preprocess`` -> (batch, n_depths * width) float32."""
        self.calls += 1
        self.images_encoded += pixels.shape[0]
        pixels = pixels.to(self.device, self.visual.conv1.weight.dtype)
        out = self.visual.forward_intermediates(pixels, indices=[d - 1 for d in self.depths], stop_early=True,
                                                intermediates_only=True, output_fmt="NLC",
                                                output_extra_tokens=True)
        tokens = [cls[:, 0].float() for cls in out["image_intermediates_prefix"]]
        return torch.cat([F.layer_norm(t, (self.width,)) for t in tokens], dim=-1)


def build_encoder(config: VisualConfig, device: torch.device | str = "cpu",
                  allow_download: bool | None = None) -> ClipEncoder:
    """Create the frozen encoder; never downloads unless allowed (flag or MM_ADAPTER_ALLOW_DOWNLOAD=1)."""
    clip_model_config(config.clip_model, allow_download)
    _refuse_download(config, allow_download)
    quiet = _DropRandomInitWarning()  # our own one line below replaces open_clip's
    logging.getLogger().addFilter(quiet)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.clip_seed)  # random weights are reproducible from the seed
        try:
            model, _, preprocess = _open_clip().create_model_and_transforms(
                config.clip_model, pretrained=config.clip_pretrained, device=device)
        except (RuntimeError, OSError, ValueError, KeyError, EOFError, pickle.UnpicklingError) as error:
            first = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
            raise MMAdapterError(f"checkpoint {config.clip_pretrained} does not fit CLIP model {config.clip_model} "
                                 f"(not a checkpoint, or another encoder's): {first}") from None
        finally:
            logging.getLogger().removeFilter(quiet)
    visual = model.visual
    del model  # the text tower is not needed
    if not hasattr(visual, "forward_intermediates") or not hasattr(visual, "transformer"):
        raise MMAdapterError(f"CLIP model {config.clip_model!r} has no ViT image tower; choose a ViT-* model")
    encoder = ClipEncoder(config, visual, preprocess, random_weights=config.clip_pretrained is None)
    if encoder.random_weights:
        print(f"visual encoder {config.clip_model} has RANDOM weights (seed {config.clip_seed}; no pretrained "
              f"checkpoint given): features are reproducible but carry no learned vision", file=sys.stderr)
    return encoder


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No pretrained weights loaded")
