"""One config dataclass per job: the single source of the jobs' settings and of the command's flags.

Each job function (``mm_adapter.jobs.<job>``) takes one of these and returns a result object.
The command line generates its flags from the fields (help from the field docstrings), loads a
recipe with ``--config FILE`` (flags override it), and jobs with an output folder write the
resolved config there as ``config.yaml``: passing that file back reproduces the run. Torch-free.

Option groups shared by several commands mean the same everywhere: ``--base``/``--dtype``/``--device``/
``--threads`` come from ``model.config.ModelOptions``, ``--data``/``--hf`` from ``data.config.ScienceQASource``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Tuple

from mm_adapter.data.config import (  # noqa: F401  (data synthetic-*, data spoken-context)
    ScienceQASource, SpokenContextConfig, SyntheticDataConfig)
from mm_adapter.encoders.audio.config import AudioConfig
from mm_adapter.encoders.config import FRAME_ORDERS, MAX_FRAMES, VisualConfig, parse_depths
from mm_adapter.errors import ConfigError, MMAdapterError
from mm_adapter.eval.config import FORMATS, EvalConfig, TableConfig  # noqa: F401  (TableConfig: the table command's)
from mm_adapter.fields import check, option
from mm_adapter.inference.config import SamplingConfig
from mm_adapter.methods.config import LLAMA_ADAPTER, OUR_METHODS, TuningConfig
from mm_adapter.model.config import GATE_ACTIVATIONS, GATE_INITS, AdapterConfig, ModelOptions
from mm_adapter.training.config import TrainConfig

CONVERT_SOURCES = ("official", "peft", "litgpt", "ours", "folder")
CONVERT_TARGETS = ("ours", "peft", "folder", "merged")
NOTHING_TO_ABLATE = ("nothing to ablate: give values to at least one of --gate-inits, --layers, --lengths, "
                     "--activations (or with --images: --blanked, --frame-orders, --frame-counts)")
LITGPT_LAYOUTS = ("pre-0.5.5", "0.5.5+")  # mm_adapter.interop.litgpt.LAYOUTS (that module imports torch)


def _positive(config: object, *names: str) -> None:
    for name in names:
        check(config, name, low=1, integer=True, optional=True)


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
        _positive(self, "limit", "max_seq_len")
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
        _positive(self, "limit", "val_limit", "val_every", "max_seq_len", "feature_batch_size")
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


@dataclass
class EvalScienceQAConfig:
    """Evaluate a base model, with or without an adapter, on a ScienceQA split: predictions, table, summary."""

    split: str
    """split to evaluate: test, val, train, minival, ..."""
    out: str
    """output folder: predictions.json (official shape; resumable through predictions.partial.jsonl), table.md,
    summary.json, config.yaml, eval.json (what was evaluated, paths absolute)"""
    source: ScienceQASource = field(default_factory=ScienceQASource)
    adapter: str | None = None
    """adapter: our .safetensors file, an adapter folder, a training run's folder (its chosen adapter, else its
    final one) or a hub id org/name[@revision]; one trained with images also encodes each problem's image"""
    limit: int | None = None
    """only the first N problems of the split"""
    name: str | None = None
    """row name in the predictions file and the table (None: method, run or base, format, split[:N])"""
    reference: str | None = None
    """published tables JSON to show side by side"""
    bootstrap: int = 1000
    """bootstrap resamples for 95% intervals (0: none)"""
    overwrite: bool = False
    """replace finished predictions in --out, or discard a partial run of another configuration"""
    skip_bad_images: bool = False
    """with an image adapter: a missing/corrupt image makes its problem a no-image one (counted)"""
    audio_encoder: str | None = None
    """with an adapter trained with sound: where its Whisper encoder is now (a folder, model.bin parts, a packaged
    name, a hub id), when not where training found it; its weights must be the ones it was trained with"""
    skip_bad_audio: bool = False
    """with an audio adapter: a missing/corrupt/over-long sound makes its problem one without sound (counted)"""
    blank_audio: bool = False
    """with an audio adapter: every sound becomes one second of silence (its file is not read), as for an adapter
    trained with --blank-audio (recorded in the folder's config.yaml)"""
    progress: bool = True
    """show progress (a bar on a terminal, a line every ~10% otherwise)"""
    model: ModelOptions = field(default_factory=ModelOptions)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        _positive(self, "limit")
        check(self, "bootstrap", low=0, integer=True)


@dataclass
class GenerateConfig:
    """Answer an Alpaca-style instruction with the base and one of several adapters, streamed."""

    adapter: list[str] = option(default_factory=list, nargs="*")
    """adapters: our .safetensors files, adapter folders, training run folders or hub ids org/name[@revision]; all
    are read and checked against the base up front"""
    use: str | None = None
    """which adapter to apply (a run's adapter: RUN/best or RUN/adapter; else the file name without .safetensors,
    the folder name, or the hub repo name); needed with several"""
    instruction: str | None = None
    """omit for an interactive session (one instruction per line; ':use NAME' switches adapter)"""
    input: str = ""
    """optional input/context for the instruction"""
    bf16: bool = False
    """bf16 autocast; off by default so an answer does not depend on the device's bf16 support (training's default
    is on; the precision used is printed at the start)"""
    seed: int = 0
    """sampling seed"""
    model: ModelOptions = field(default_factory=ModelOptions)
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=256))

    def __post_init__(self) -> None:
        check(self, "seed", low=0, integer=True)


@dataclass
class DemoConfig:
    """Answer one multiple-choice question about an image: the chosen option and every option's probability."""

    question: str
    """the question"""
    choices: list[str] = option(default_factory=list, nargs="+", metavar="CHOICE")
    """two or more options"""
    image: str | None = option(None, alias="--video")
    """image file (PNG, JPEG, ...) or video clip (GIF, MP4, WebM: the adapter's frames are sampled from it); omit
    for a text-only question"""
    audio: str | None = option(None, metavar="FILE")
    """sound file (WAV, FLAC, MP3, OGG/Opus, M4A, or a clip's sound track; at most 30 s) for an adapter trained with
    sound; a video clip given as --video with a sound track is heard without it"""
    context: str = ""
    """optional hint text shown with the question"""
    adapter: str | None = None
    """adapter: our .safetensors file, an adapter folder (adapter_config.json + adapter_model.safetensors), a
    training run's folder or a hub id org/name[@revision]; one trained with images uses the image"""
    audio_encoder: str | None = None
    """with an adapter trained with sound: where its Whisper encoder is now, when not where training found it"""
    format: str | None = option(None, choices=FORMATS)
    """prompt format (None: the one the adapter file records, else QCM-A)"""
    bf16: bool = False
    """bf16 autocast; off by default so an answer does not depend on the device's bf16 support (training's default
    is on; the precision used is printed at the start)"""
    model: ModelOptions = field(default_factory=ModelOptions)


@dataclass
class ServeConfig:
    """The demo as a local web page: upload an image or clip and/or a sound (or record one from the microphone),
    type a question and options, see the answer."""

    adapter: str | None = None
    """adapter: our .safetensors file, an adapter folder (adapter_config.json + adapter_model.safetensors), a
    training run's folder or a hub id org/name[@revision]; one trained with images uses the image, one trained with
    sound hears the sound"""
    audio_encoder: str | None = None
    """with an adapter trained with sound: where its Whisper encoder is now, when not where training found it"""
    format: str | None = option(None, choices=FORMATS)
    """prompt format (None: the one the adapter file records, else QCM-A)"""
    host: str = "127.0.0.1"
    """address to listen on (127.0.0.1: this machine only)"""
    port: int = 8000
    """port (0: any free port)"""
    timeout: float = 60.0
    """seconds a client may stay silent while sending its request; then it is answered 408 or dropped"""
    bf16: bool = False
    """bf16 autocast; off by default so an answer does not depend on the device's bf16 support (training's default
    is on; the precision used is printed at the start)"""
    model: ModelOptions = field(default_factory=ModelOptions)

    def __post_init__(self) -> None:
        check(self, "port", low=0, high=65535, integer=True)
        check(self, "timeout", low=0, low_open=True)


@dataclass
class ConvertConfig:
    """Convert an adapter between the official LLaMA-Adapter v1 release, PEFT, litgpt and ours (one file, or a
    folder like PEFT's)."""

    input: str = option(positional=True, metavar="INPUT")
    """foreign file (official, litgpt), PEFT folder, or ours: a .safetensors file, an adapter folder or a hub id
    (--from ours or folder)"""
    output: str = option(positional=True, metavar="OUTPUT")
    """our .safetensors file, a PEFT folder, an adapter folder (--to folder: adapter_config.json,
    adapter_model.safetensors, README.md), or --to merged: a plain transformers model folder with the V2 bias/scale
    and norms merged in, plus prompt_adapter.safetensors (the prompts and gates)"""
    source: str = option("ours", alias="--from", choices=CONVERT_SOURCES)
    """format of INPUT"""
    target: str = option("ours", alias="--to", choices=CONVERT_TARGETS)
    """format of OUTPUT"""
    adapter_len: int | None = None
    """official only: prompts per layer (not stored in the file; default 10)"""
    official_gate: str | None = option(None, choices=GATE_ACTIVATIONS)
    """official only: identity = its inference code (default), tanh = its training code"""
    litgpt_layout: str | None = option(None, choices=LITGPT_LAYOUTS)
    """litgpt only: the fused qkv layout of the litgpt that wrote INPUT (its files do not say); needed where the two
    differ, i.e. on a base with more than one key/value head"""
    overwrite: bool = False
    """replace an existing OUTPUT"""
    model: ModelOptions = field(default_factory=ModelOptions)

    def __post_init__(self) -> None:
        _positive(self, "adapter_len")
        check(self, "source", choices=CONVERT_SOURCES)
        check(self, "target", choices=CONVERT_TARGETS)
        check(self, "litgpt_layout", choices=LITGPT_LAYOUTS, optional=True)


@dataclass
class PushConfig:
    """Upload an adapter folder to the Hugging Face hub (needs a token: HF_TOKEN or `hf auth login`)."""

    adapter: str
    """adapter folder (adapter_config.json + adapter_model.safetensors + README.md), e.g. from convert --to folder"""
    repo: str
    """hub repo id org/name (created if it does not exist)"""
    private: bool = False
    """create the repo as private (an existing repo keeps its visibility)"""


@dataclass
class MainConfig:
    """The main job: data -> multimodal adapter on SmolLM2 -> test table -> one demo answer, in a fresh folder."""

    data: str | None = None
    """a local official-layout ScienceQA folder with images/ (None: the hub copy if reachable within seconds,
    else a generated image set)"""
    hub: bool = True
    """try the Hugging Face hub copy when no --data is given"""
    out: str | None = None
    """output folder (None: a fresh runs/main-<time>)"""
    runs: str = "runs"
    """parent of the default output folder"""
    n_train: int = 600
    """generated training problems"""
    n_val: int = 60
    """generated val problems"""
    n_test: int = 200
    """generated test problems"""
    epochs: int = 4
    """training epochs"""
    lr: float = 3e-2
    """learning rate"""
    adapter_layers: int = 8
    """top layers adapted (8 of SmolLM2's 30: the backward stops below them)"""
    format: str = option("QCM-T", choices=FORMATS)
    """prompt format (QCM-T: answer by option text, which a 135M model learns; QCM-A: letters)"""
    clip_model: str = "ViT-B-32"
    """open_clip encoder (random weights here: no pretrained CLIP weights can be had offline)"""
    # typing.Tuple: simple_parsing cannot read `tuple[int, ...]` inside a union
    clip_layers: int | Tuple[int, ...] = option(4, type=parse_depths, metavar="N|D1,D2,...")
    """N evenly spaced encoder depths, or explicit 1-based depths"""
    seed: int = 0
    """seed of the generated data and of training"""
    progress: bool = True
    """show progress of training and evaluation (a bar on a terminal, a line every ~10% otherwise)"""
    model: ModelOptions = field(default_factory=lambda: ModelOptions(threads=2))

    def __post_init__(self) -> None:
        _positive(self, "n_train", "n_val", "n_test", "epochs", "adapter_layers")
        check(self, "lr", low=0, low_open=True)
        check(self, "seed", low=0, integer=True)


@dataclass
class AblateConfig(TrainScienceQAConfig):
    """The paper's ablations on ScienceQA: the training settings are the baseline; each variant changes one of them
    (gate init, adapter layers, adapter length, gate activation, with --images images vs blanked images and, for video
    clips, frame order and frame count), trains into OUT/<variant> and is scored by its best val accuracy; OUT gets
    table.md, table.json and table.png. The same command again skips finished variants and resumes a stopped one from its checkpoint (no --resume needed)."""

    out: str
    """output folder: one training run per variant (OUT/baseline, OUT/layers-16, ...), table.md, table.json,
    table.png, config.yaml"""
    gate_inits: list[str] = option(default_factory=lambda: list(GATE_INITS), nargs="*", choices=GATE_INITS)
    """gate initialisations compared (zero: zero-init attention; random: N(0, gate_init_std^2)); none: skip"""
    layers: list[int] = option(default_factory=lambda: [8, 16, 30], nargs="*", metavar="N")
    """adapter_layers values compared (the top N decoder layers adapted); none: skip"""
    lengths: list[int] = option(default_factory=lambda: [5, 10, 20], nargs="*", metavar="N")
    """adapter_len values compared (prompts per adapted layer); none: skip"""
    activations: list[str] = option(default_factory=lambda: list(GATE_ACTIVATIONS), nargs="*", choices=GATE_ACTIVATIONS)
    """gate activations compared; none: skip"""
    blanked: bool = True
    """with --images: also train with every image blanked (--blank-images) against the real images"""
    frame_orders: list[str] = option(default_factory=list, nargs="*", choices=FRAME_ORDERS)
    """with --images on video clips: frame orders compared (shuffled: each clip's frames in a fixed random order,
    so only what the frames show, not when, is left); none: skip"""
    frame_counts: list[int] = option(default_factory=list, nargs="*", metavar="K")
    """with --images on video clips: --frames values compared (1: the middle frame alone); none: skip"""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tuning.method != LLAMA_ADAPTER:
            raise ConfigError("method", f"the ablations vary the gates, layers and prompts of {LLAMA_ADAPTER}; "
                                        f"{self.tuning.method} has none")
        for name, known in (("gate_inits", GATE_INITS), ("activations", GATE_ACTIVATIONS)):
            unknown = [value for value in getattr(self, name) if value not in known]
            if unknown:
                raise ConfigError(name, f"must be among {', '.join(known)}, got {unknown[0]!r}")
        for name in ("layers", "lengths"):
            values = getattr(self, name)
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
                raise ConfigError(name, f"must be positive integers, got {values}")
        unknown = [value for value in self.frame_orders if value not in FRAME_ORDERS]
        if unknown:
            raise ConfigError("frame_orders", f"must be among {', '.join(FRAME_ORDERS)}, got {unknown[0]!r}")
        if not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_FRAMES for v in self.frame_counts):
            raise ConfigError("frame_counts", f"must be integers from 1 to {MAX_FRAMES}, got {self.frame_counts}")
        for name in ("frame_orders", "frame_counts"):
            if getattr(self, name) and not self.images:
                raise ConfigError(name, "compares the frames of video clips, which need --images")
        if not (self.gate_inits or self.layers or self.lengths or self.activations or self.frame_orders
                or self.frame_counts or (self.images and self.blanked)):
            raise MMAdapterError(NOTHING_TO_ABLATE)  # a setting of the command line: refused before the data


@dataclass
class PlanConfig:
    """What a training recipe needs, before any download: the model laid out on the meta device (no weights),
    trainable and frozen parameter counts, per-GPU memory (weights, adapter, optimizer state, activations: an
    estimate), tokens per epoch, and how many GPUs of a given memory it takes."""

    recipe: str = option(positional=True, metavar="RECIPE")
    """a recipe name, as --config takes it (alpaca-llama7b, scienceqa-llama7b-vitl14, alpaca-llama65b-fsdp, ...;
    the older llama7b-alpaca works too), or a recipe / config.yaml file"""
    gpus: int = 8
    """GPUs the run uses (the paper's 8): the per-GPU share under fsdp, the effective batch, the lr, the steps"""
    gpu_memory: float = 80.0
    """memory of one GPU in GiB (80: an A100/H100 80GB)"""

    def __post_init__(self) -> None:
        _positive(self, "gpus")
        check(self, "gpu_memory", low=0, low_open=True)
