"""ScienceQA with images, end to end on a tiny Llama and the tiny ViT: the answer is only the picture's colour.

The train and eval jobs run in this process (imports are the slow part on two busy cores). With images the
adapter must learn the colour; text-only on the same data must stay near chance (1/3); the adapter
file reloads in one call with identical logits; no-image problems never see the projection; a
resumed run restores the projection and ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from mm_adapter import AdapterConfig, MMAdapterError, TrainConfig, attach_adapter, load_base, read_adapter, save_adapter
from mm_adapter.cli.commands import find
from mm_adapter.cli.parse import parse
from mm_adapter.data.config import ScienceQASource
from mm_adapter.data.features import ImageOffsets, compute_features
from mm_adapter.encoders.clip import TINY_VIT, VisualConfig, build_encoder
from mm_adapter.encoders.projection import VisualProjection, visual_extras
from mm_adapter.eval.config import EvalConfig
from mm_adapter.eval.run import evaluate
from mm_adapter.inference.scoring import option_log_probs
from mm_adapter.jobs.configs.evaluation import EvalScienceQAConfig
from mm_adapter.jobs.configs.training import TrainScienceQAConfig
from mm_adapter.jobs.eval_scienceqa import eval_scienceqa
from mm_adapter.jobs.train_scienceqa import train_scienceqa
from mm_adapter.methods.config import TuningConfig
from mm_adapter.model.adapter import adaption_prompts
from mm_adapter.model.config import AdapterV2Config, ModelOptions
from mm_adapter.pretrained import load_multimodal_adapter
from mm_adapter.scienceqa.data import Problem, read_official
from mm_adapter.scienceqa.prompts import build_prompt, option_letters
from mm_adapter.training.checkpoints.format import load_checkpoint
from mm_adapter.training.multimodal import PROJECTION_ATTR, attach_projection, disjoint_loss, projection_lr_scales
from mm_adapter.training.trainer import build_optimizer
from tiny import tiny_model

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220)}
VISUAL = VisualConfig(clip_model=TINY_VIT, clip_layers=2)


def picture(colour: str, rng: random.Random) -> Image.Image:
    """A square of the colour (jittered shade and place) on white: no two pictures are identical."""
    image = Image.new("RGB", (48, 48), (255, 255, 255))
    shade = tuple(min(255, max(0, v + rng.randint(-25, 25))) for v in COLOURS[colour])
    x, y = rng.randint(0, 10), rng.randint(0, 10)
    image.paste(shade, (x, y, x + 36, y + 36))
    return image


def write_dataset(root: Path, sizes: dict[str, int], seed: int = 0) -> Path:
    """Official layout; each split has every colour equally often, plus a few no-image problems."""
    rng, problems, splits, pid = random.Random(seed), {}, {}, 0
    for split, n in sizes.items():
        splits[split] = []
        colours = [list(COLOURS)[i % 3] for i in range(n)]
        rng.shuffle(colours)
        for i, colour in enumerate(colours):
            pid += 1
            with_image = i % 8 != 7
            problems[str(pid)] = {"question": "Which color is the picture?" if with_image else "Which color is grass?",
                                  "choices": list(COLOURS), "answer": list(COLOURS).index(colour if with_image
                                                                                         else "green"),
                                  "hint": "", "image": "image.png" if with_image else None, "split": split,
                                  "subject": "natural science", "grade": "grade2", "category": "Colors"}
            splits[split].append(str(pid))
            if with_image:
                (root / "images" / split / str(pid)).mkdir(parents=True)
                picture(colour, rng).save(root / "images" / split / str(pid) / "image.png")
    (root / "problems.json").write_text(json.dumps(problems))
    (root / "pid_splits.json").write_text(json.dumps(splits))
    return root


def word_tokenizer(problems: list[Problem]) -> PreTrainedTokenizerFast:
    """Word-level: every word of the prompts, the answer sentence and the option letters is one token."""
    texts = [build_prompt(p, "QCM-A", use_caption=True).text for p in problems]
    texts += ["The answer is " + " ".join(option_letters(5)) + " . N/A"]
    words = {w for text in texts for w, _ in pre_tokenizers.Whitespace().pre_tokenize_str(text)}
    vocab = {token: i for i, token in enumerate(["<pad>", "<unk>", "<s>", "</s>", *sorted(words)])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One thread for the whole module, module-scoped fixtures included: the resume test compares a run
    trained by the module fixture with one trained inside the test, bit for bit, and float sums differ
    between thread counts. (Two shared cores: one thread is also faster for tiny models.)"""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True, scope="module")
def cache_dir(tmp_path_factory):
    """The feature cache in the test's temporary folder, for the module fixtures' training runs too."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MM_ADAPTER_CACHE", str(tmp_path_factory.getbasetemp() / "feature-cache"))
        yield


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("multimodal")
    data = write_dataset(folder / "data", {"train": 72, "val": 12, "test": 48})
    problems = read_official(data)[0]
    tokenizer = word_tokenizer(problems)
    model = tiny_model("llama-gqa", vocab_size=len(tokenizer), max_position_embeddings=512, initializer_range=0.2)
    model.save_pretrained(folder / "base")
    tokenizer.save_pretrained(folder / "base")
    return folder, data


def tiny_config(folder: Path, data: Path, out: Path, images: bool = False, resume: bool = False):
    """Tiny settings: QCM-A, adapter 8 x 4 (N(0,1) prompts), 8 epochs of 9 steps, lr 5e-2, the tiny ViT."""
    return TrainScienceQAConfig(
        out=str(out), source=ScienceQASource(data=str(data)), format="QCM-A", images=images,
        model=ModelOptions(base=str(folder / "base"), dtype="fp32"),
        adapter=AdapterConfig(adapter_len=8, adapter_layers=4, prompt_init="normal"),
        train=TrainConfig(epochs=8, warmup_epochs=1, batch_size=8, lr=5e-2, bf16=False, checkpoint_every=36,
                          progress=False, resume=resume),
        visual=VisualConfig(clip_model=TINY_VIT, clip_layers=2, visual_standardize=True))


def finetune(folder: Path, data: Path, out: Path, images: bool = False, resume: bool = False):
    """train_scienceqa in this process with the tiny settings."""
    return train_scienceqa(tiny_config(folder, data, out, images, resume))


def test_flags_spell_the_tiny_run(tmp_path):
    """The documented flags of `mm-adapter train scienceqa` give exactly the config the job runs here with."""
    flags = ["--base", str(tmp_path / "base"), "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"),
             "--format", "QCM-A", "--adapter-len", "8", "--adapter-layers", "4", "--prompt-init", "normal",
             "--epochs", "8", "--warmup-epochs", "1", "--batch-size", "8", "--lr", "5e-2", "--dtype", "fp32",
             "--no-bf16", "--checkpoint-every", "36", "--no-progress", "--clip-model", TINY_VIT, "--clip-layers", "2",
             "--images", "--resume"]
    parsed = parse(find(["train", "scienceqa"])[0], flags)
    assert parsed == tiny_config(tmp_path, tmp_path / "data", tmp_path / "out", images=True, resume=True)


@pytest.fixture(scope="module")
def trained(setup):
    """One run with images, one text-only, same data and budget."""
    folder, data = setup
    for run, images in (("img", True), ("txt", False)):
        result = finetune(folder, data, folder / run, images=images)
        assert result.train.steps == 72 and result.best_path == folder / run / "best.safetensors"
        assert result.best_path.is_file() and 0 < result.best_step <= 72
    return folder


def test_images_learned_text_only_at_chance(setup, trained):
    """On test, the image adapter answers the picture's colour (>= 85%); the text-only one stays near chance."""
    folder, data = setup
    accuracy = {}
    for run in ("img", "txt"):
        result = eval_scienceqa(EvalScienceQAConfig(
            split="test", out=str(folder / f"{run}-test"), source=ScienceQASource(data=str(data)),
            adapter=str(folder / run / "best.safetensors"), bootstrap=0, progress=False,
            model=ModelOptions(base=str(folder / "base"))))
        assert result.predictions.is_file() and "IMG" in result.table
        assert result.summary.total == 48 and result.scores.scored == 48
        accuracy[run] = result.scores["IMG"].acc
    assert accuracy["img"] >= 85.0, accuracy  # percent; chance is 33.3
    assert accuracy["txt"] <= 50.0, accuracy


@pytest.mark.parametrize("disjoint,least", [(True, 60.0), (False, 85.0)])
def test_llama_adapter_v2_with_early_fusion_learns_the_pictures(setup, tmp_path, monkeypatch, disjoint, least):
    """--method llama-adapter-v2 --images: images reach the prompts of the bottom 2 of the 4 adapted layers only, and
    with V2's disjoint parameters (the default) only problems with an image train those, only the others the rest.
    Either way the run learns the colours (test IMG well above the chance 33.3: 69.05 disjoint, where only the 1 in 8
    text problems train the later layers, and 100.00 without, measured here), and its best file records the V2 part
    with its fusion depth and the visual part, and reloads in one call to the accuracy validation chose it by."""
    folder, data = setup
    config = tiny_config(folder, data, tmp_path / "v2", images=True)
    config.tuning = TuningConfig(method="llama-adapter-v2", v2_fusion_layers=2, v2_disjoint=None if disjoint else False)
    from mm_adapter.jobs import train_scienceqa as job

    steps = []
    monkeypatch.setattr(job, "disjoint_loss", lambda model, batch: steps.append(1) or disjoint_loss(model, batch))
    result = train_scienceqa(config)
    assert len(steps) == (72 if disjoint else 0)  # the job trains through the disjoint routes exactly when asked
    best = read_adapter(result.best_path)
    assert best.v2 == AdapterV2Config(fusion_layers=2) and "visual" in best.extra_metadata
    model, tokenizer = load_base(str(folder / "base"))
    encoder, projection = load_multimodal_adapter(model, result.best_path)
    assert [m.visual for m in adaption_prompts(model).values()] == [True, True, False, False]
    problems = read_official(data, "val")[0]
    answers = evaluate(model, tokenizer, problems, EvalConfig(), ImageOffsets(projection, compute_features(
        encoder, problems, data)))
    assert sum(answers[p.pid].choice == p.answer for p in problems) / len(problems) == pytest.approx(result.best_val)
    tested = eval_scienceqa(EvalScienceQAConfig(
        split="test", out=str(tmp_path / "v2-test"), source=ScienceQASource(data=str(data)),
        adapter=str(result.best_path), bootstrap=0, progress=False, model=ModelOptions(base=str(folder / "base"))))
    assert tested.scores["IMG"].acc >= least, tested.scores["IMG"].acc  # percent; chance is 33.3


def open_gates(model) -> None:
    """Gates start at 0 (prompts and offsets then do nothing); open them so the test can see a difference."""
    for module in model.modules():
        if isinstance(getattr(module, "gate", None), torch.nn.Parameter):
            module.gate.data.fill_(0.5)


def random_projection(encoder) -> VisualProjection:
    torch.manual_seed(1)
    return VisualProjection(encoder.feature_dim, 64, VisualConfig(clip_model=TINY_VIT, clip_layers=2, visual_zero_init=False))


def test_adapter_file_round_trip_gives_identical_logits(setup, tmp_path):
    """An adapter file with the visual part reloads in one call (frozen) with identical logits; a text-only file
    loads no visual part."""
    folder, data = setup
    model, tokenizer = load_base(str(folder / "base"))
    attach_adapter(model, AdapterConfig(adapter_len=4, adapter_layers=3))
    open_gates(model)
    encoder = build_encoder(VISUAL)
    projection = random_projection(encoder)
    problems = read_official(data, "val")[0]
    prompts = [build_prompt(p, "QCM-A", use_caption=True).prompt for p in problems]
    n = [3] * len(problems)
    features = compute_features(encoder, problems, data)
    before = option_log_probs(model, tokenizer, prompts, n, ImageOffsets(projection, features)(problems))
    save_adapter(model, tmp_path / "mm.safetensors", *visual_extras(VISUAL, projection, encoder))

    fresh, _ = load_base(str(folder / "base"))
    loaded_encoder, loaded_projection = load_multimodal_adapter(fresh, tmp_path / "mm.safetensors")  # one call
    assert not any(p.requires_grad for p in loaded_projection.parameters())
    loaded = compute_features(loaded_encoder, problems, data)
    after = option_log_probs(fresh, tokenizer, prompts, n, ImageOffsets(loaded_projection, loaded)(problems))
    assert torch.equal(before, after)
    assert not torch.equal(after, option_log_probs(fresh, tokenizer, prompts, n))  # the images do matter
    save_adapter(model, tmp_path / "text.safetensors")
    assert load_multimodal_adapter(load_base(str(folder / "base"))[0], tmp_path / "text.safetensors") is None


def test_best_file_carries_the_visual_part(setup, trained):
    """best.safetensors, loaded in one call, reproduces the validation accuracy it was chosen with."""
    folder, data = setup
    model, tokenizer = load_base(str(folder / "base"))
    best = trained / "img" / "best.safetensors"
    encoder, projection = load_multimodal_adapter(model, best)
    problems = read_official(data, "val")[0]
    offsets = ImageOffsets(projection, compute_features(encoder, problems, data))
    answers = evaluate(model, tokenizer, problems, EvalConfig(), offsets)
    val = sum(answers[p.pid].choice == p.answer for p in problems) / len(problems)
    assert f"{val:.4f}" == read_adapter(best).extra_metadata["val_accuracy"]
    for name in ("best", "adapter"):  # both files say which prompt format they answer in
        assert read_adapter(trained / "img" / f"{name}.safetensors").extra_metadata["prompt_format"] == "QCM-A"
    stats = read_adapter(best).extra_tensors  # the training images' feature statistics travel with it
    assert stats["visual.feature_std"].shape == (encoder.feature_dim,) and stats["visual.feature_mean"].abs().sum() > 0


def test_projection_learning_rates_scale_with_fan_in():
    """The widest projection layer (and the norm) trains at lr x lr_scale, a narrower Linear at lr x lr_scale x
    widest fan-in / its fan-in (capped at lr); the prompts and gates keep lr, in the first (logged) groups."""
    model = tiny_model("llama-gqa")
    attach_adapter(model, AdapterConfig(adapter_len=4, adapter_layers=2))
    projection = VisualProjection(512, 64, VisualConfig(clip_model=TINY_VIT, visual_hidden=32)).requires_grad_(False)
    assert attach_projection(model, projection) is getattr(model, PROJECTION_ATTR) is projection
    assert all(p.requires_grad for p in projection.parameters())  # trained, checkpointed and restored with the model
    scales = projection_lr_scales(projection, 0.01)
    first, second = projection.proj[0], projection.proj[2]
    assert all(scales[p] == 0.01 for p in (*first.parameters(), *projection.norm.parameters()))
    assert all(scales[p] == 0.01 * 512 / 32 for p in second.parameters())
    assert projection_lr_scales(projection, 0.5)[second.weight] == 1.0  # capped at the prompts' lr
    optimizer = build_optimizer(model, TrainConfig(weight_decay=0.02), 1e-3, scales)
    lr_of = {id(p): group.get("lr") for group in optimizer.param_groups for p in group["params"]}
    assert optimizer.param_groups[0]["lr"] == 1e-3
    assert all(lr_of[id(p)] == 1e-3 for n, p in model.named_parameters() if p.requires_grad
               and not n.startswith(PROJECTION_ATTR))
    assert all(lr_of[id(p)] == 1e-3 * scales[p] for p in projection.parameters())
    assert len(lr_of) == sum(p.requires_grad for p in model.parameters())


def test_no_image_problems_are_unaffected_by_the_projection(setup):
    """A problem without an image gets an offset of exactly 0: answered as by the text-only adapter."""
    folder, data = setup
    model, tokenizer = load_base(str(folder / "base"))
    attach_adapter(model, AdapterConfig(adapter_len=4, adapter_layers=3))
    open_gates(model)
    encoder = build_encoder(VISUAL)
    problems = read_official(data, "val")[0]
    offsets = ImageOffsets(random_projection(encoder), compute_features(encoder, problems, data))(problems)
    without = [i for i, p in enumerate(problems) if not p.has_image]
    with_image = [i for i, p in enumerate(problems) if p.has_image]
    assert without and with_image
    assert torch.equal(offsets[without], torch.zeros(len(without), 64))
    prompts = [build_prompt(p, "QCM-A", use_caption=True).prompt for p in problems]
    mixed = option_log_probs(model, tokenizer, prompts, [3] * len(problems), offsets)
    text_only = option_log_probs(model, tokenizer, prompts, [3] * len(problems))
    torch.testing.assert_close(mixed[without], text_only[without], atol=1e-5, rtol=0)
    assert (mixed[with_image] - text_only[with_image]).abs().max() > 1e-3


def test_resume_restores_the_projection(setup, trained):
    """A run cut after its first checkpoint and resumed ends with the same adapter and projection, bit for bit."""
    folder, data = setup
    whole = folder / "img"
    checkpoints = sorted((whole / "checkpoints").iterdir())
    assert any(k.startswith("param.visual_projection.") for k in load_checkpoint(checkpoints[0]).tensors)
    cut = folder / "img-cut"
    shutil.copytree(checkpoints[0], cut / "checkpoints" / checkpoints[0].name)
    assert finetune(folder, data, cut, images=True, resume=True).train.steps == 72
    expected, got = read_adapter(whole / "adapter.safetensors"), read_adapter(cut / "adapter.safetensors")
    assert expected.extra_tensors.keys() == got.extra_tensors.keys() and "visual.proj.2.weight" in got.extra_tensors
    assert any(v.abs().sum() > 0 for k, v in got.extra_tensors.items() if k.startswith("visual.proj.2"))
    for key in expected.extra_tensors:
        assert torch.equal(expected.extra_tensors[key], got.extra_tensors[key]), key
    for index in expected.layers:
        assert torch.equal(expected.layers[index]["prompt"], got.layers[index]["prompt"])
    assert got.extra_metadata["visual"] == expected.extra_metadata["visual"]


def test_bad_images_are_one_line_or_skipped(setup, tmp_path):
    """A truncated or missing image is one error line naming it (and --skip-bad-images); skipped, it becomes a
    no-image problem; HF-layout image bytes give the same features as the files."""
    folder, data = setup
    problems = read_official(data, "val")[0]
    broken = shutil.copytree(data, tmp_path / "data")
    first, second = [p for p in problems if p.has_image][:2]
    png = broken / "images" / "val" / first.pid / "image.png"
    png.write_bytes(png.read_bytes()[:60])  # truncated
    (broken / "images" / "val" / second.pid / "image.png").unlink()
    encoder = build_encoder(VISUAL)
    with pytest.raises(MMAdapterError) as error:
        compute_features(encoder, problems, broken)
    assert str(error.value).count("\n") == 0 and "image.png" in str(error.value) and "--skip-bad-images" in str(
        error.value)
    features = compute_features(encoder, problems, broken, skip_bad=True)
    assert len(features.skipped) == 2 and first.pid not in features.by_pid and second.pid not in features.by_pid
    assert len(features.by_pid) == sum(p.has_image for p in problems) - 2
    # the Hugging Face layout's image bytes give the same features as the files
    as_bytes = Problem(first.pid, first.question, first.choices, first.answer, image="image.png",
                       image_bytes=(data / "images" / "val" / first.pid / "image.png").read_bytes())
    got = compute_features(encoder, [as_bytes], None)
    assert torch.equal(got.by_pid[first.pid], compute_features(encoder, [first], data).by_pid[first.pid])
