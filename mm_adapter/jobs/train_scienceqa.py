"""Fine-tune a LLaMA-Adapter on ScienceQA (``mm-adapter train scienceqa``), text-only or with images and/or sound.

Trains on ``train_split``, scores ``val_split`` every ``val_every`` steps (and at the end) in
score mode and keeps the adapter with the best val accuracy as ``best.safetensors``
(``adapter.safetensors`` is the last step's). With ``images`` each problem's image goes through
a frozen open_clip encoder once, before training (features cached on disk; a video clip as
``visual.frames`` sampled frames), and a trainable projection adds it to every adaption prompt; the adapter files
then carry the visual config, so ``eval scienceqa`` and ``demo`` load them in one call. With ``audio`` each
problem's sound goes the same way through a frozen Whisper encoder and a second projection (the two offsets add).
Every adapter file records its prompt format.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mm_adapter.data.features import (
    ImageOffsets,
    OffsetSum,
    compute_audio_features,
    compute_features,
    report_skipped,
    with_audio_features,
    with_features,
)
from mm_adapter.data.problems import encode_problems, load_problems
from mm_adapter.encoders.audio.adapter_part import audio_extras, audio_projection
from mm_adapter.encoders.audio.whisper import build_audio_encoder
from mm_adapter.encoders.clip import build_encoder
from mm_adapter.encoders.projection import VisualProjection, frames_note, trainable_summary
from mm_adapter.errors import MMAdapterError
from mm_adapter.eval.config import EvalConfig
from mm_adapter.eval.run import check_fit
from mm_adapter.files.output_folder import CONFIG_NAME, Output, outputs_in, write_config
from mm_adapter.jobs.configs.training import TrainScienceQAConfig
from mm_adapter.jobs.recording import record_run
from mm_adapter.jobs.runtime import (
    finish_distributed,
    job_folder,
    precision_line,
    prepare,
    rank_zero_print,
    source_inputs,
)
from mm_adapter.jobs.validation import LOG_NAME, ValidationSelector
from mm_adapter.methods.attach import Tuned, attach_method
from mm_adapter.methods.config import OUR_METHODS
from mm_adapter.methods.folders import ADAPTER_FOLDER, BEST_FOLDER, folder_saver, relocated, trainer_export
from mm_adapter.methods.run_record import RUN_RECORD
from mm_adapter.methods.virtual_tokens import context_tokens
from mm_adapter.model.adapter import count_trainable
from mm_adapter.model.adapter_file import PROMPT_FORMAT_KEY, save_adapter
from mm_adapter.pretrained import base_metadata
from mm_adapter.scienceqa.data import Problem
from mm_adapter.training.base_loading import load_training_base
from mm_adapter.training.batches import BatchPlan, Example, PadCollator
from mm_adapter.training.multimodal import (
    AUDIO_PROJECTION_ATTR,
    PartExport,
    attach_projection,
    disjoint_loss,
    multimodal_loss,
    projection_lr_scales,
)
from mm_adapter.training.process import DistInfo, setup_distributed
from mm_adapter.training.trainer import TrainResult, train, trainer_outputs

COMMAND = "train scienceqa"
BEST_NAME = "best.safetensors"


def scienceqa_outputs(out: str | Path, flag: str = "--out") -> list[Output]:
    """Every path the job writes in ``out`` (none may be one of its inputs; ``main`` names them by its own flag)."""
    return trainer_outputs(out, flag) + outputs_in(flag, out, [CONFIG_NAME, BEST_NAME, LOG_NAME, RUN_RECORD],
                                                   folders=[ADAPTER_FOLDER, BEST_FOLDER])


@dataclass
class ScienceQATrainResult:
    """The trainer's result, the best val accuracy and the adapter file that reached it."""

    train: TrainResult
    best_val: float
    best_step: int
    best_path: Path


@dataclass
class MediaRun:
    """What a media part (the images, the sound) changes in the training call."""

    examples: list[Example]
    offsets: ImageOffsets
    export: PartExport
    identity: dict
    lr_scales: dict[nn.Parameter, float]


def _train_and_val_features(compute: Callable, train_problems: Sequence[Problem], val_problems: Sequence[Problem],
                            split_names: tuple[str, str]) -> tuple:
    """``compute``'s features of the train problems, then of the val problems (each split's skipped files reported
    under its name), as one table; with the train rows and which of them have a feature (the projection's
    standardisation statistics come from those)."""
    features = compute(train_problems)
    report_skipped(features, split_names[0])
    train_rows, train_mask = features.rows(train_problems)
    val_features = compute(val_problems)
    report_skipped(val_features, split_names[1])
    features.by_pid |= val_features.by_pid
    return features, train_rows, train_mask


def prepare_images(config: TrainScienceQAConfig, model: nn.Module, examples: list[Example],
                   train_problems: Sequence[Problem], val_problems: Sequence[Problem], device: torch.device,
                   say: Callable[[str], None]) -> MediaRun:
    """Encoder, features of train and val problems (once, through the cache), projection on the model."""
    encoder = build_encoder(config.visual, device)
    features, train_rows, train_mask = _train_and_val_features(
        lambda problems: compute_features(encoder, problems, config.source.data, config.skip_bad_images,
                                          config.feature_batch_size, blank=config.blank_images),
        train_problems, val_problems, (config.train_split, config.val_split))
    say(f"image features: {len(features.by_pid)} problems with an image, encoder {config.visual.clip_model} depths "
        f"{encoder.depths} ({encoder.feature_dim} features){frames_note(config.visual)}")
    hidden = model.config.get_text_config().hidden_size
    projection = VisualProjection(encoder.feature_dim, hidden, config.visual, device=device)
    if config.visual.visual_standardize and train_mask.any():
        projection.set_feature_stats(train_rows[train_mask])
    say(trainable_summary(model, projection))
    attach_projection(model, projection)
    identity = {"visual": config.visual.to_dict(), "encoder": encoder.identity,
                "visual_lr_scale": config.visual_lr_scale, "image_features": features.fingerprint(train_problems)}
    return MediaRun(with_features(examples, train_problems, features), ImageOffsets(projection, features),
                    PartExport(config.visual, projection, encoder), identity,
                    projection_lr_scales(projection, config.visual_lr_scale))


def prepare_audio(config: TrainScienceQAConfig, model: nn.Module, examples: list[Example],
                  train_problems: Sequence[Problem], val_problems: Sequence[Problem], device: torch.device,
                  say: Callable[[str], None]) -> MediaRun:
    """Whisper encoder, features of train and val sounds (once, through the cache), the audio projection on the
    model: the image path's steps for sound."""
    encoder = build_audio_encoder(config.sound, device)
    features, train_rows, train_mask = _train_and_val_features(
        lambda problems: compute_audio_features(encoder, problems, config.source.data, config.skip_bad_audio,
                                                config.feature_batch_size, blank=config.blank_audio),
        train_problems, val_problems, (f"{config.train_split} (sound)", f"{config.val_split} (sound)"))
    blanked = ", every one blanked to silence" if config.blank_audio else ""
    say(f"audio features: {len(features.by_pid)} problems with a sound{blanked}, {encoder.describe()} "
        f"({encoder.feature_dim} features)")
    projection = audio_projection(config.sound, encoder.feature_dim, model.config.get_text_config().hidden_size,
                                  device=device)
    if config.sound.audio_standardize and train_mask.any():
        projection.set_feature_stats(train_rows[train_mask])
    attach_projection(model, projection, AUDIO_PROJECTION_ATTR)
    identity = {"audio": config.sound.to_dict(), "audio_encoder": encoder.identity,
                "audio_features": features.fingerprint(train_problems)}
    if config.blank_audio:
        identity["audio_blanked"] = True  # absent otherwise: the identity of every run before the flag is unchanged
    return MediaRun(with_audio_features(examples, train_problems, features), ImageOffsets(projection, features),
                    PartExport(config.sound, projection, encoder, audio_extras), identity,
                    projection_lr_scales(projection, config.visual_lr_scale))


class _Exports(list):
    """The file extras of several parts (the image's, the sound's) as one."""

    def extras(self) -> tuple[dict, dict]:
        tensors, metadata = {}, {}
        for part in self:
            more_tensors, more_metadata = part.extras()
            tensors |= more_tensors
            metadata |= more_metadata
        return tensors, metadata


def media_run(config: TrainScienceQAConfig, model: nn.Module, examples: list[Example],
              train_problems: Sequence[Problem], val_problems: Sequence[Problem], device: torch.device,
              say: Callable[[str], None]) -> MediaRun | None:
    """The image part (--images), the sound part (--audio), both, or None: one ``MediaRun`` whose examples carry
    every part's features, whose offsets and file extras are the parts' together."""
    runs = []
    if config.images:
        runs.append(prepare_images(config, model, examples, train_problems, val_problems, device, say))
        examples = runs[-1].examples
    if config.audio:
        runs.append(prepare_audio(config, model, examples, train_problems, val_problems, device, say))
    if len(runs) < 2:
        return runs[0] if runs else None
    image, audio = runs
    projection = getattr(model, AUDIO_PROJECTION_ATTR)
    say(f"trainable parameters of the audio projection: {sum(p.numel() for p in projection.parameters()):,}")
    return MediaRun(audio.examples, OffsetSum([image.offsets, audio.offsets]), _Exports([image.export, audio.export]),
                    image.identity | audio.identity, image.lr_scales | audio.lr_scales)


def v2_disjoint(config: TrainScienceQAConfig) -> bool:
    """Whether V2's disjoint parameter groups apply: images, no sound (not defined for it), and the method's setting."""
    return config.images and not config.audio and config.tuning.disjoint


def train_scienceqa(config: TrainScienceQAConfig) -> ScienceQATrainResult:
    """Load the splits and the base, attach the adapter (and projection), train with val-based selection."""
    device = prepare(config.model)
    config.source.require()
    info = setup_distributed(str(device))
    if v2_disjoint(config) and info.world_size > 1:  # DDP needs every parameter's gradient
        raise MMAdapterError("--v2-disjoint trains some parameters on only some rows, which DistributedDataParallel "
                             "does not sync; train on one process or pass --v2-disjoint false")
    inputs = {**source_inputs(config.source), "--base": config.model.base}
    with job_folder(config.out, scienceqa_outputs(config.out), inputs, lock=info.is_main,
                    resume=config.train.resume) as out:  # refused before the slow parts
        result, selector = _train_in(out, config, device, info)
    finish_distributed()
    return ScienceQATrainResult(result, selector.best, selector.best_step, out / selector.best_name)


def _train_in(out: Path, config: TrainScienceQAConfig, device: torch.device,
              info: DistInfo) -> tuple[TrainResult, ValidationSelector]:
    """The job inside its locked output folder: data, base, adapter (and projection), training."""
    say = rank_zero_print(info.is_main)
    train_problems = load_problems(config.source, config.train_split, config.captions, config.limit, say)
    val_problems = load_problems(config.source, config.val_split, config.captions, config.val_limit, say)
    model, tokenizer = load_training_base(config.model.base, config.model.dtype, config.train, config.model.device)
    torch.manual_seed(config.train.seed)
    tuned = attach_method(model, config.tuning, config.adapter, autocast=config.train.bf16)
    model = tuned.model
    context = context_tokens(model)
    examples, kept = encode_problems(tokenizer, train_problems, config.format, config.captions, config.max_seq_len,
                                     context=context)
    if len(kept) < len(train_problems):
        say(f"left out {len(train_problems) - len(kept)} problem(s) longer than max_seq_len={config.max_seq_len}"
            f"{f' or the model context ({context} tokens)' if context else ''}")
    # a val problem the model cannot read would stop the run at its first validation, an epoch from now
    check_fit(model, tokenizer, val_problems, EvalConfig(format=config.format, captions=config.captions))
    images = media_run(config, model, examples, kept, val_problems, device, say)
    say(tuned.describe())
    say(precision_line(model, config.train.bf16, device))
    say(f"{len(examples)} training problems, {len(val_problems)} val; "
        f"{count_trainable(model):,} trainable parameters; world size {info.world_size}")

    def file_extras() -> tuple[dict, dict]:
        """What every adapter file of this run carries besides prompts and gates (the visual parts, the format,
        the base it was made for)."""
        tensors, metadata = images.export.extras() if images else ({}, {})
        return tensors, metadata | {PROMPT_FORMAT_KEY: config.format} | base_metadata(model)

    plan = BatchPlan([len(e["input_ids"]) for e in examples], config.train.batch_size, config.train.seed,
                     config.train.epochs, info.world_size, config.train.accum_steps, config.train.group_batches)
    every = config.val_every or max(1, plan.total_steps // config.train.epochs)  # once per epoch
    plan.max_steps = config.train.max_steps  # the last step validates too: where --max-steps ends the run
    if info.is_main and not config.train.resume:  # a resume keeps the first part's config.yaml (it reproduces
        write_config(out, COMMAND, config)         # the whole run; a refused resume must not touch the folder)
    selector = ValidationSelector(tokenizer, val_problems, out, every, plan.total_steps,
                                  EvalConfig(format=config.format, captions=config.captions, calibrate=config.calibrate,
                                             bf16=config.train.bf16, batch_size=16),
                                  is_main=info.is_main, offsets=images and images.offsets, extras=file_extras,
                                  resume=config.train.resume, **_best_saver(tuned, config.format, tokenizer))
    identity = {"base_dtype": config.model.dtype, "task": "scienceqa", "format": config.format,
                "captions": config.captions} | (images.identity if images else {}) | tuned.identity()
    disjoint = v2_disjoint(config)
    if disjoint:  # absent otherwise: runs from before it existed still resume
        identity["v2_disjoint"] = True
        say("V2 disjoint parameters: problems with an image train the projection and the early layers' prompts and "
            "gates, problems without one the rest")
    extra = {} if images is None else {"forward_loss": disjoint_loss if disjoint else multimodal_loss,
                                       "lr_scales": images.lr_scales}
    result = train(model, images.examples if images else examples, config.train,
                   PadCollator(tokenizer.pad_token_id), out, device=str(device), on_step_end=selector,
                   identity=identity, export=trainer_export(tuned, lambda m, path: save_adapter(m, path,
                                                                                               *file_extras()),
                                                            config.format, tokenizer), **extra)
    if info.is_main:
        splits = {"train": {"name": config.train_split, "problems": len(train_problems), "examples": len(examples)},
                  "val": {"name": config.val_split, "problems": len(val_problems)}}
        chosen_by = {"val_accuracy": round(selector.best, 4), "step": selector.best_step}
        record_run(out, COMMAND, tuned, prompt_format=config.format, source=source_inputs(config.source),
                   examples=examples, splits=splits, seed=config.train.seed,
                   chosen=selector.best_name if (out / selector.best_name).exists() else None, chosen_by=chosen_by)
    return relocated(result, tuned.method), selector


def _best_saver(tuned: Tuned, prompt_format: str, tokenizer) -> dict:
    """ValidationSelector's arguments for the best checkpoint: best.safetensors (ours and its V2, its default), else
    the method's folder best/."""
    if tuned.method in OUR_METHODS:
        return {}
    return {"save": folder_saver(tuned, prompt_format, tokenizer), "best_name": BEST_FOLDER}
