"""The trainable projection from frozen encoder features into the adaption prompts, and an adapter file's
visual part (its projection, checked against the encoder it was trained with).

* projection: LayerNorm -> Linear(in, 64) -> GELU -> Linear(64, hidden) ("mlp"), or
  LayerNorm -> Linear(in, hidden) ("linear"). The last Linear starts at zero, so an adapter with
  images starts exactly where the text-only adapter is (the offset is 0 until it learns).
* a problem without an image gets an offset row of exactly 0 (``torch.where``, not a product).
* video clips (``frames`` = K > 1): everything before the last Linear runs on each frame with shared weights
  (the same frame encoder for every position), then the K frame vectors go side by side, in time order, into
  the last Linear (in = K x visual_hidden). The slot is the frame's position, so order survives without a
  position embedding (one added before pooling is what pooling needs to keep order); a still image is the
  1-frame case, which is exactly the layout and arithmetic of image adapters, so their files load unchanged.

With ViT-L-14 (width 1024, 24 blocks, 4 depths -> 4096 features) and LLaMA-7B (hidden 4096) the
"mlp" projection has 536,640 parameters; with the adapter's 1,229,760 that is 1,766,400 (~1.8M,
the paper's count). A full "linear" projection would be 16.8M.
"""
from __future__ import annotations

import torch
from torch import nn

from mm_adapter.encoders.clip import ClipEncoder, build_encoder, feature_dim
from mm_adapter.encoders.config import VisualConfig
from mm_adapter.errors import MMAdapterError
from mm_adapter.files.safe_load import check_tensor
from mm_adapter.model.adapter import count_trainable
from mm_adapter.model.adapter_file import apply_adapter

VISUAL_PREFIX = "visual."  # the projection's tensors in an adapter file


class VisualProjection(nn.Module):
    """Trainable map from encoder features to the language model's hidden size (the prompt offset)."""

    def __init__(self, in_dim: int, hidden_size: int, config: VisualConfig = VisualConfig(),
                 device: torch.device | str | None = None):
        super().__init__()
        self.in_dim, self.hidden_size = in_dim, hidden_size
        kw = {"device": device, "dtype": torch.float32}
        self.standardize = config.visual_standardize
        if config.visual_standardize:  # buffers: saved in state_dict (adapter files), not trained
            self.register_buffer("feature_mean", torch.zeros(in_dim, **kw))
            self.register_buffer("feature_std", torch.ones(in_dim, **kw))
        self.frames = config.frames
        self.norm = nn.LayerNorm(in_dim, **kw) if config.visual_norm else nn.Identity()
        if config.visual_projection == "mlp":  # the last Linear takes the frames side by side
            self.proj = nn.Sequential(nn.Linear(in_dim, config.visual_hidden, **kw), nn.GELU(),
                                      nn.Linear(config.visual_hidden * self.frames, hidden_size, **kw))
        else:
            self.proj = nn.Sequential(nn.Linear(in_dim * self.frames, hidden_size, **kw))
        if config.visual_zero_init and self.proj[-1].weight.device.type != "meta":
            nn.init.zeros_(self.proj[-1].weight)  # offset starts at exactly 0: text-only behaviour at step 0
            nn.init.zeros_(self.proj[-1].bias)

    @classmethod
    def from_config(cls, config: VisualConfig, hidden_size: int,
                    device: torch.device | str | None = None) -> "VisualProjection":
        return cls(feature_dim(config), hidden_size, config, device=device)

    @torch.no_grad()
    def set_feature_stats(self, features: torch.Tensor) -> None:
        """Per-feature mean and std of the training images' features (rows of real images only)."""
        if not self.standardize:
            raise MMAdapterError("this projection was configured without standardize")
        features = features.float().to(self.feature_mean.device).reshape(-1, self.in_dim)  # clips: every frame
        self.feature_mean.copy_(features.mean(0))
        self.feature_std.copy_(features.std(0, unbiased=False).clamp_min(1e-4) if len(features) > 1
                               else torch.ones_like(self.feature_std))

    def _project(self, features: torch.Tensor) -> torch.Tensor:
        if self.standardize:
            features = (features - self.feature_mean) / self.feature_std
        per_frame = self.proj[:-1](self.norm(features))  # (batch, [frames,] width), shared over frames
        return self.proj[-1](per_frame.flatten(1))  # frames side by side in time order

    def _check_frames(self, features: torch.Tensor) -> None:
        frames = features.shape[1] if features.ndim == 3 else 1
        if frames != self.frames or features.ndim not in (2, 3) or features.shape[-1] != self.in_dim:
            raise MMAdapterError(f"the visual projection takes {self.frames} frame(s) of {self.in_dim} features, got "
                                 f"features of shape {list(features.shape)}")

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, in_dim) features, or (batch, frames, in_dim) for clips, and a (batch,) bool mask -> (batch, hidden);
        unmasked rows are exactly 0."""
        self._check_frames(features)
        features = features.float()
        if mask is None:
            return self._project(features)
        keep = mask.to(features.device).bool()[:, None]
        zero = torch.zeros((), dtype=features.dtype, device=features.device)
        # zero the inputs too: garbage (NaN) in a row without an image must not reach the gradients
        out = self._project(torch.where(keep.view(-1, *[1] * (features.ndim - 1)), features, zero))
        return torch.where(keep, out, zero)


def frames_note(config: VisualConfig) -> str:
    """How clips are seen, for the jobs' log lines ("" for the still-image path)."""
    if config.frames == 1:
        return ""
    return f", clips as {config.frames} {config.frame_order} frames"


def trainable_summary(model: nn.Module, projection: nn.Module) -> str:
    """One line: the adapter's and the projection's trainable counts and their sum."""
    adapter = count_trainable(model)
    visual = sum(p.numel() for p in projection.parameters() if p.requires_grad)
    total = adapter + visual
    return (f"trainable parameters: adapter {adapter:,} + visual projection {visual:,} = {total:,} "
            f"({total / 1e6:.2f}M)")


def part_extras(key: str, config, projection: VisualProjection,
                encoder=None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """An adapter file's media part (``key``: "visual" or "audio"): the projection's tensors under ``key.``, the
    config under ``key``, the features' width under ``key_in_dim`` and the encoder's identity under ``key_encoder``."""
    tensors = {f"{key}.{k}": v for k, v in projection.state_dict().items()}
    metadata = {key: config.to_json(), f"{key}_in_dim": str(projection.in_dim)}
    if encoder is not None:
        metadata[f"{key}_encoder"] = encoder.identity
    return tensors, metadata


def visual_extras(config: VisualConfig, projection: VisualProjection,
                  encoder: ClipEncoder | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``extra_tensors`` / ``extra_metadata`` for ``adapter_file.save_adapter``: the projection and config."""
    return part_extras("visual", config, projection, encoder)


def projection_from_adapter(adapter_file, hidden_size: int | None = None,
                            device: torch.device | str | None = None) -> tuple[VisualConfig, VisualProjection] | None:
    """The visual config and loaded projection stored in an ``AdapterFile``, or None for a text-only one.

    Sizes come from the stored tensors: the projection is laid out on the meta device (no memory, whatever
    widths the metadata claims), every stored tensor is checked against that layout, then put in place.
    """
    meta = adapter_file.extra_metadata
    if "visual" not in meta:
        return None
    where = adapter_file.path
    config = VisualConfig.from_json(meta["visual"], source=str(where))
    state = {k[len(VISUAL_PREFIX):]: v for k, v in adapter_file.extra_tensors.items() if k.startswith(VISUAL_PREFIX)}
    in_dim = stored_in_dim(where, meta, state)
    projection = VisualProjection(in_dim, hidden_size or adapter_file.base.hidden_size, config, device="meta")
    check_state(where, projection.state_dict(), state)
    projection.load_state_dict(state, assign=True)
    return config, projection.to(device or "cpu", torch.float32)


def stored_in_dim(where, meta: dict[str, str], state: dict[str, torch.Tensor], prefix: str = VISUAL_PREFIX) -> int:
    """The projection's input width, from its first stored weight; the metadata's ``<part>_in_dim`` must agree."""
    first = state.get("proj.0.weight")
    if first is None or first.ndim != 2:
        found = "missing" if first is None else f"of shape {list(first.shape)}"
        raise MMAdapterError(f"{where}: tensor {prefix}proj.0.weight is {found}, expected [width, in_dim]")
    in_dim = first.shape[1]
    key = f"{prefix[:-1]}_in_dim"
    recorded = meta.get(key, str(in_dim))
    if recorded.strip() != str(in_dim):
        raise MMAdapterError(f"{where}: metadata {key} is {recorded[:40]!r}, but {prefix}proj.0.weight "
                             f"takes {in_dim} features")
    return in_dim


def check_state(where, expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor],
                prefix: str = VISUAL_PREFIX) -> None:
    """Every tensor the projection's layout needs, of its shape and floating point; nothing else."""
    part = prefix[:-1]
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        found = f"missing {prefix}{missing[0]}" if missing else f"unexpected {prefix}{unexpected[0]}"
        raise MMAdapterError(f"{where}: {part} projection tensors do not fit its {part} config: {found}")
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            raise MMAdapterError(f"{where}: {prefix}{key} has shape {list(tensor.shape)}, but the {part} config "
                                 f"and base need {list(expected[key].shape)}")
        check_tensor(where, f"{prefix}{key}", tensor)


def _check_feature_width(where, config: VisualConfig, projection: VisualProjection) -> None:
    """The encoder the config names must give the width the stored projection takes (from the architecture
    config alone: before the encoder's weights are allocated)."""
    width = feature_dim(config)
    if width != projection.in_dim:
        raise MMAdapterError(f"{where}: its visual projection takes {projection.in_dim} features, but "
                             f"{config.clip_model} at depths {config.clip_layers} gives {width}")


def check_encoder(adapter_file, encoder: ClipEncoder) -> None:
    """Refuse an encoder other than the one the adapter's projection was trained on."""
    expected = adapter_file.extra_metadata.get("visual_encoder")
    if expected and expected != encoder.identity:
        raise MMAdapterError(f"{adapter_file.path}: trained with image encoder {expected}, but this encoder "
                             f"({encoder.config.clip_model}, pretrained={encoder.config.clip_pretrained}) is {encoder.identity}")


def apply_multimodal(model: nn.Module, adapter, device: torch.device | str | None = None
                     ) -> tuple[ClipEncoder, VisualProjection] | None:
    """:func:`load_multimodal_adapter` for an ``AdapterFile`` already read."""
    device = device or next(model.parameters()).device
    found = projection_from_adapter(adapter, device=device)
    if found is not None:
        _check_feature_width(adapter.path, *found)
    apply_adapter(model, adapter)
    if found is None:
        return None
    config, projection = found
    encoder = build_encoder(config, device)
    check_encoder(adapter, encoder)
    return encoder, projection.requires_grad_(False).eval()
