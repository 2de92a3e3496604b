"""The configs of the two training commands, train alpaca and train scienceqa: the paper's recipes as defaults, and
a setting that cannot train (images or sound for a method with no adaption prompts to add them to, a blanking with
nothing to blank) refused when the config is built, before any data is read."""

from __future__ import annotations

from dataclasses import dataclass, field

from mm_adapter.data.config import ScienceQASource
from mm_adapter.encoders.audio.config import AudioConfig
from mm_adapter.encoders.config import VisualConfig
from mm_adapter.errors import ConfigError
from mm_adapter.eval.config import FORMATS, EvalConfig
from mm_adapter.fields import check, check_positive, option
from mm_adapter.methods.config import OUR_METHODS, TuningConfig
from mm_adapter.model.config import AdapterConfig, ModelOptions
from mm_adapter.training.config import TrainConfig


@dataclass
class TrainAlpacaConfig:
    """Fine-tune a LLaMA-Adapter (or, with --method, another method) on Alpaca instruction data; defaults are the
    paper's (recipe alpaca-paper)."""

    data: str
    """{instruction, input, output} records: a local file (JSON list, JSONL or .parquet) or, when no such file
    exists, a Hugging Face hub dataset id such as tatsu-lab/alpaca (offline: its copy in the hub cache)"""
    out: str
    """output folder: adapter.safetensors (another --method: the folder adapter/), metrics.jsonl, loss.png,
    checkpoints/, config.yaml, run.json (the run's record, when it finishes)"""
    split: str = "train"
    """split of a hub dataset; a local file is one split, train"""
    limit: int | None = option(None, alias="--max-records")
    """use only the first N records (taken before any record is checked)"""
    strict: bool = False
    """refuse the first empty or unusable record (a field missing, empty or over-long) instead of skipping it; by
    default such records are skipped and counted in one line"""
    skip_bad: bool = True
    """older spelling: --no-skip-bad is --strict (config files written before --strict say skip_bad: false, which
    reproduces their run: it had no bad record)"""
    max_seq_len: int = 512
    """tokens per example; a record whose prompt fills it is dropped"""
    model: ModelOptions = field(default_factory=lambda: ModelOptions(dtype="fp32"))
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    tuning: TuningConfig = field(default_factory=TuningConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        check_positive(self, "limit", "max_seq_len")
        if self.tuning.v2_disjoint is not None:
            raise ConfigError("v2_disjoint", "splits the parameters between problems with and without an image; "
                                             "train alpaca has no images")

    @property
    def skips_bad(self) -> bool:
        """Whether bad records are skipped and counted (the default) rather than refused."""
        return self.skip_bad and not self.strict


@dataclass
class TrainScienceQAConfig:
    """Fine-tune a LLaMA-Adapter (or, with --method, another method) on ScienceQA, text-only (captions as context)
    or with images (--images); the best val checkpoint is kept as best.safetensors (another method: best/).
    Defaults: recipe scienceqa-smollm2-cpu."""

    out: str
    """output folder: best.safetensors, adapter.safetensors (another --method: the folders best/ and adapter/),
    validation.jsonl, metrics.jsonl, loss.png, checkpoints/, config.yaml, run.json (the run's record, when it
    finishes)"""
    source: ScienceQASource = field(default_factory=ScienceQASource)
    train_split: str = "train"
    """split trained on"""
    val_split: str = "val"
    """split that chooses the best checkpoint (score mode)"""
    limit: int | None = None
    """train on the first N problems of train_split only"""
    val_limit: int | None = None
    """score only the first N val problems (faster selection)"""
    val_every: int | None = None
    """optimizer steps between validations (None: once per epoch)"""
    format: str = option("QCM-T", choices=FORMATS)
    """prompt format: QCM-T answers by option text (what a 135M model learns); QCM-A is the paper's letters"""
    captions: bool = True
    """image questions get their caption as context"""
    max_seq_len: int = 512
    """tokens per problem; longer problems are left out (and counted)"""
    images: bool = False
    """train the multimodal adapter: each problem's image through the frozen CLIP encoder (features cached on
    disk) and a trainable projection added to every adaption prompt"""
    visual_lr_scale: float = 0.01
    """lr of the projection's widest layer = lr x this (narrower ones scaled by fan-in); at the prompts' lr its
    first layer's units die"""
    skip_bad_images: bool = False
    """a missing/corrupt image makes its problem a no-image problem (counted) instead of an error"""
    feature_batch_size: int = 32
    """images per encoder forward when computing features"""
    blank_images: bool = False
    """with --images: every image becomes one mid-gray picture (its file is not read), so the visual path learns
    nothing of what images show (the images-vs-blanked ablation)"""
    calibrate: bool = False
    """validation scores options calibrated, as eval scienceqa --calibrate: minus their score after a content-free
    prompt"""
    audio: bool = False
    """train with sound: each problem's audio file (its "audio" field; else the sound track of its video clip)
    through the frozen Whisper encoder (--audio-encoder; features cached on disk) and a trainable projection added
    to every adaption prompt, beside the image's with --images"""
    skip_bad_audio: bool = False
    """a missing/corrupt/over-long sound makes its problem a problem without sound (counted) instead of an error"""
    blank_audio: bool = False
    """with --audio: every sound becomes one second of silence (its file is not read), so the audio path learns
    nothing of what sounds hold (the sound-vs-silence comparison; evaluate with eval scienceqa --blank-audio)"""
    model: ModelOptions = field(default_factory=lambda: ModelOptions(dtype="bf16"))
    adapter: AdapterConfig = field(default_factory=lambda: AdapterConfig(prompt_init="norm_scaled"))
    tuning: TuningConfig = field(default_factory=TuningConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=3, warmup_epochs=0.3, lr=5e-3,
                                                                   batch_size=8))
    visual: VisualConfig = field(default_factory=lambda: VisualConfig(visual_standardize=True))
    sound: AudioConfig = field(default_factory=lambda: AudioConfig(audio_standardize=True))

    def __post_init__(self) -> None:
        check_positive(self, "limit", "val_limit", "val_every", "max_seq_len", "feature_batch_size")
        if self.audio and self.tuning.method not in OUR_METHODS:
            raise ConfigError("audio", f"adds sound features to the adaption prompts of --method "
                                       f"{' or '.join(OUR_METHODS)}; {self.tuning.method} has none")
        if self.audio and self.tuning.v2_disjoint:
            raise ConfigError("v2_disjoint", "splits the parameters between problems with and without an image; "
                                             "it is not defined for sound (pass --v2-disjoint false with --audio)")
        check(self, "visual_lr_scale", low=0, low_open=True)
        check(self, "format", choices=FORMATS)
        EvalConfig(format=self.format, calibrate=self.calibrate)  # validation is score mode: refuses QCM-LEA
        if self.blank_images and not self.images:
            raise ConfigError("blank_images", "blanks the images of --images; without --images there are none")
        if self.blank_audio and not self.audio:
            raise ConfigError("blank_audio", "blanks the sounds of --audio; without --audio there are none")
        if self.tuning.v2_disjoint is not None and not self.images:
            raise ConfigError("v2_disjoint", "splits the parameters between problems with and without an image; "
                                             "it applies with --images")
        if self.images and self.tuning.method not in OUR_METHODS:
            raise ConfigError("images", f"adds image features to the adaption prompts of --method "
                                        f"{' or '.join(OUR_METHODS)}; {self.tuning.method} has none")
