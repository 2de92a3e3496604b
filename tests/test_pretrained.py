"""Adapter folders as PEFT users expect them: ``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` and
``model.save_pretrained`` on an adapted model, on tiny bases; hub ids are read from a hub cache built by hand in a
temporary folder (``HF_HUB_OFFLINE=1``, no network); every ``--adapter`` takes a file, a folder or a hub id."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from test_demo_predictor import CHOICES, QUESTION, TINY, make_demo_files
from test_eval_run import single_thread  # noqa: F401 (autouse fixture)
from test_eval_run_script import official_layout
from transformers import PreTrainedModel

import mm_adapter
from mm_adapter import (
    AdapterConfig, BaseIdentity, MMAdapterError, attach_adapter, count_trainable, detach_adapter, from_pretrained,
    load_base, push_to_hub, read_adapter, save_pretrained,
)
from mm_adapter.encoders.clip import build_encoder
from mm_adapter.encoders.projection import VisualProjection, visual_extras
from mm_adapter.jobs.configs.answering import ServeConfig
from mm_adapter.jobs.demo import load_predictor
from mm_adapter.model.adapter import prompt_offset
from mm_adapter.model.adapter_file import PROMPT_FORMAT_KEY
from mm_adapter.model.config import ModelOptions
from mm_adapter.pretrained import (
    CONFIG_NAME, FOLDER_FILES, WEIGHTS_NAME, load_multimodal_adapter, loaded_adapter, read_pretrained,
    resolve_adapter,
)
from mm_adapter.scienceqa.predictions import load_predictions
from mm_adapter.training.multimodal import attach_projection
from tiny import randomise_adapter, tiny_model
from tiny_text import command_here, finetune_here, records, tiny_base_folder, write_records

COMMIT_A, COMMIT_B = "a" * 40, "b" * 40
IDS = torch.arange(3, 12)[None]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tiny_base_folder(tmp_path_factory.mktemp("base"))


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    """An empty hub cache of our own, read offline: nothing can come from the network or the user's cache."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def adapted(base: Path, seed: int = 3):
    """The base folder loaded as a spec, with a small adapter whose gates are open (its prompts reach the output)."""
    model, _ = load_base(str(base))
    attach_adapter(model, AdapterConfig(adapter_len=3, adapter_layers=2))
    return randomise_adapter(model, seed=seed)


def logits(model, offset: torch.Tensor | None = None) -> torch.Tensor:
    with torch.no_grad(), prompt_offset(model, offset):
        return model(input_ids=IDS).logits


def cache_repo(cache: Path, repo: str, snapshots: dict[str, Path], refs: dict[str, str]) -> None:
    """What huggingface_hub leaves after downloading ``repo``: snapshots/<commit>/files and refs/<name> -> commit."""
    storage = cache / f"models--{repo.replace('/', '--')}"
    for commit, folder in snapshots.items():
        shutil.copytree(folder, storage / "snapshots" / commit)
    for ref, commit in refs.items():
        (storage / "refs").mkdir(parents=True, exist_ok=True)
        (storage / "refs" / ref).write_text(commit)


def one_line_error(call, *args, **kwargs) -> str:
    with pytest.raises(MMAdapterError) as caught:
        call(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message, message
    return message


def test_model_save_pretrained_writes_the_adapter_folder_only(base, tmp_path, capsys):
    """PEFT's reflex on an adapted model: model.save_pretrained(dir) writes the adapter folder only (never the frozen
    base), prints nothing and returns None like transformers' own; a fresh base loaded from it gives the same
    logits; after detach_adapter the method is transformers' own again."""
    model = adapted(base)
    capsys.readouterr()
    assert model.save_pretrained(tmp_path / "saved") is None
    assert capsys.readouterr() == ("", "")
    files = sorted(p.name for p in (tmp_path / "saved").iterdir())
    assert files == sorted(FOLDER_FILES)
    assert sum((tmp_path / "saved" / name).stat().st_size for name in files) < 1 << 20
    fresh, _ = load_base(str(base))
    assert from_pretrained(fresh, tmp_path / "saved") is fresh
    assert torch.equal(logits(fresh), logits(model))
    message = one_line_error(model.save_pretrained, tmp_path / "pushed", push_to_hub=True)
    assert "mm_adapter.push_to_hub" in message and not (tmp_path / "pushed").exists()
    detach_adapter(model)
    assert "save_pretrained" not in vars(model)
    assert model.save_pretrained.__func__ is PreTrainedModel.save_pretrained


def test_the_folder_writer_is_installed_from_above_in_a_fresh_process(tmp_path):
    """The model layer never imports the folder layer; importing ``attach_adapter`` from the package installs
    ``model.save_pretrained``'s folder writer all the same (a fresh process, nothing else imported)."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from tiny import tiny_model; "
            "from mm_adapter import AdapterConfig, attach_adapter; "
            "model = attach_adapter(tiny_model(), AdapterConfig(adapter_len=2, adapter_layers=1)); "
            "assert 'mm_adapter.pretrained' in sys.modules; model.save_pretrained(sys.argv[2])")
    done = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), str(tmp_path / "saved")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == sorted(FOLDER_FILES)


def test_folder_says_what_it_is_and_its_weights_read_as_our_single_file(base, tmp_path):
    """adapter_config.json records the format, the method, the base (the spec given to load_base, transformers'
    path, its identity), the adapter config and the trainable count; adapter_model.safetensors is our single-file
    format (read_adapter reads it, with the base spec in its metadata); the card names the base and the count;
    files get the permissions the umask gives."""
    model = adapted(base)
    folder = save_pretrained(model, tmp_path / "skill", extra_metadata={PROMPT_FORMAT_KEY: "QCM-T"})
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert (config["format"], config["method"], config["library_name"]) == ("mm-adapter-folder/1", "llama-adapter",
                                                                           "mm-adapter")
    assert config["base_model_spec"] == config["base_model_name_or_path"] == str(base)
    assert config["base_identity"] == asdict(BaseIdentity.of(model))
    assert config["adapter_config"] == AdapterConfig(adapter_len=3, adapter_layers=2).to_dict()
    assert config["prompt_format"] == "QCM-T" and config["visual"] is None
    assert config["trainable_parameters"] == {"adapter": count_trainable(model), "visual": 0,
                                              "total": count_trainable(model)}
    single = read_adapter(folder / WEIGHTS_NAME)
    assert single.prompt_format == "QCM-T" and json.loads(single.extra_metadata["base_source"])["spec"] == str(base)
    card = (folder / "README.md").read_text()
    assert f"`{base}`" in card and f"{count_trainable(model):,} adapter" in card and "from_pretrained" in card
    umask = os.umask(0)
    os.umask(umask)
    assert {oct(p.stat().st_mode & 0o777) for p in folder.iterdir()} == {oct(0o666 & ~umask)}


def test_saving_beside_other_files_keeps_them_and_a_model_folder_is_refused(base, tmp_path):
    """A folder that already holds a tokenizer keeps it (only the adapter's files are replaced); a transformers model
    folder (the base itself) and a file are refused in one line and left untouched."""
    model = adapted(base)
    folder = tmp_path / "with-tokenizer"
    folder.mkdir()
    (folder / "tokenizer.json").write_text("{}")
    save_pretrained(model, folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted([*FOLDER_FILES, "tokenizer.json"])
    before = sorted(p.name for p in base.iterdir())
    assert "holds a transformers model" in one_line_error(save_pretrained, model, base)
    assert sorted(p.name for p in base.iterdir()) == before
    (tmp_path / "file").write_text("x")
    assert "not a folder" in one_line_error(save_pretrained, model, tmp_path / "file")


def test_multimodal_folder_round_trip(tmp_path):
    """A visual adapter (tiny ViT) saved as a folder loads back with the same encoder and projection: the same
    logits with an image; load_multimodal_adapter takes the folder too; model.save_pretrained after from_pretrained
    keeps the visual part and the prompt format, and on a model training a projection (whose visual config it cannot
    know) it refuses in one line rather than drop the projection."""
    files = make_demo_files(tmp_path / "demo")
    model, _ = load_base(str(files.base))
    attach_adapter(model, AdapterConfig(adapter_len=3, adapter_layers=2))
    randomise_adapter(model)
    encoder = build_encoder(TINY)
    projection = VisualProjection(encoder.feature_dim, 64, TINY)
    torch.nn.init.normal_(projection.proj[-1].weight, generator=torch.Generator().manual_seed(1))
    tensors, metadata = visual_extras(TINY, projection, encoder)
    folder = save_pretrained(model, tmp_path / "mm", tensors, {**metadata, PROMPT_FORMAT_KEY: "QCM-T"})
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert config["visual"]["clip_model"] == TINY.clip_model
    assert config["trainable_parameters"]["visual"] == sum(p.numel() for p in projection.parameters())
    pixels = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = logits(model, projection(encoder(pixels)))
        fresh, _ = load_base(str(files.base))
        loaded = loaded_adapter(from_pretrained(fresh, folder))
        # every tensor comes back bit for bit; the forward is compared to float32 rounding, because the same values
        # in a freshly loaded tensor may take another kernel path (1.4e-6 seen on the projection in some orders)
        for part, back in ((projection, loaded.projection), (encoder, loaded.encoder)):
            assert all(torch.equal(tensor, back.state_dict()[name]) for name, tensor in part.state_dict().items())
        torch.testing.assert_close(logits(fresh, loaded.projection(loaded.encoder(pixels))), expected,
                                   rtol=1e-5, atol=1e-5)
        other, _ = load_base(str(files.base))
        other_encoder, other_projection = load_multimodal_adapter(other, folder)
        torch.testing.assert_close(logits(other, other_projection(other_encoder(pixels))), expected,
                                   rtol=1e-5, atol=1e-5)
    fresh.save_pretrained(tmp_path / "again")
    again = read_pretrained(tmp_path / "again")
    assert again.prompt_format == "QCM-T" and set(again.extra_tensors) == set(tensors)
    attach_projection(model, projection)
    assert "visual projection" in one_line_error(model.save_pretrained, tmp_path / "training")
    assert not (tmp_path / "training").exists()


def test_a_hub_id_loads_offline_from_the_hub_cache_and_revisions_pin_snapshots(base, tmp_path, offline_hub):
    """org/name is read from the hub cache with HF_HUB_OFFLINE=1: refs/main picks the snapshot by default; a commit
    (revision=...) or a tag (org/name@tag) picks another; a revision the cache lacks is one line naming it."""
    first, second = adapted(base, seed=1), adapted(base, seed=2)
    save_pretrained(first, tmp_path / "first")
    save_pretrained(second, tmp_path / "second")
    cache_repo(offline_hub, "org/skill", {COMMIT_A: tmp_path / "first", COMMIT_B: tmp_path / "second"},
               {"main": COMMIT_B, "v1": COMMIT_A})
    for spec, revision, expected in (("org/skill", None, second), ("org/skill", COMMIT_A, first),
                                     ("org/skill@v1", None, first)):
        fresh, _ = load_base(str(base))
        assert torch.equal(logits(from_pretrained(fresh, spec, revision=revision)), logits(expected)), spec
    assert resolve_adapter("org/skill").parent.name == COMMIT_B
    message = one_line_error(resolve_adapter, "org/skill", revision="v2")
    assert "org/skill@v2" in message and "HF_HUB_OFFLINE=1" in message
    assert "no such adapter file or folder" in one_line_error(resolve_adapter, "org/missing")


def test_a_folder_made_for_another_base_is_refused_in_one_line(base, tmp_path):
    """An adapter folder made for another base is refused before the model is touched, naming the base it was made
    for (the spec it was loaded from)."""
    save_pretrained(adapted(base), tmp_path / "skill")
    other = tiny_model("llama-gqa", seed=7, vocab_size=len(load_base(str(base))[1]), max_position_embeddings=512)
    message = one_line_error(from_pretrained, other, tmp_path / "skill")
    assert f"made for '{base}'" in message and "but this base is" in message
    assert not hasattr(other, "_mm_adapter_runtime")


@pytest.mark.parametrize("edit, message", [
    (lambda c: "{not json", "adapter config is not valid JSON (Expecting property name"),
    (lambda c: json.dumps({k: v for k, v in c.items() if k != "format"}), "missing required field(s) format"),
    (lambda c: json.dumps({**c, "adapter_config": 5}), "field 'adapter_config' must be a JSON object, found 5"),
    (lambda c: json.dumps({**c, "format": "mm-adapter-folder/9"}), "field 'format' is 'mm-adapter-folder/9'"),
    (lambda c: json.dumps({**c, "base_model_spec": 3}), "field 'base_model_spec' must be a string"),
    (lambda c: json.dumps({**c, "adapter_config": {**c["adapter_config"], "adapter_len": 4}}),
     "field 'adapter_config' does not match the metadata of adapter_model.safetensors"),
    (lambda c: json.dumps({"peft_type": "ADAPTION_PROMPT"}), "a PEFT adapter, not an mm-adapter folder"),
])
def test_a_malformed_adapter_config_is_one_line_naming_the_file_and_key(base, tmp_path, edit, message):
    """adapter_config.json that is not JSON, lacks or mistypes a field, is of another format, disagrees with the
    weights, or is PEFT's: one line naming the file and the key, wherever the folder is taken."""
    folder = save_pretrained(adapted(base), tmp_path / "skill")
    path = folder / CONFIG_NAME
    path.write_text(edit(json.loads(path.read_text())))
    fresh, _ = load_base(str(base))
    error = one_line_error(from_pretrained, fresh, folder)
    assert error.startswith(f"{path}: ") and message in error, error


def test_push_without_a_token_is_refused_before_any_network_call(base, tmp_path, monkeypatch):
    """`mm-adapter push` with no token (HF_TOKEN unset, no cached login) is one line and exit 2, in a real process
    whose hub home is empty; with a token but HF_HUB_OFFLINE=1 it is refused too; nothing is sent either way."""
    folder = save_pretrained(adapted(base), tmp_path / "skill")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_TOKEN", "HUGGING_FACE_HUB", "HF_OIDC"))}
    env.update(HF_HOME=str(tmp_path / "hf-home"), HF_HUB_OFFLINE="0", OMP_NUM_THREADS="1")
    argv = [sys.executable, "-m", "mm_adapter", "push", "--adapter", str(folder), "--repo", "org/skill"]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
                          check=False)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: pushing to the hub needs a token") and done.stdout == ""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert one_line_error(push_to_hub, folder, "org/skill", token="hf_not_a_real_token").startswith("HF_HUB_OFFLINE=1")
    assert "not a hub repo id" in one_line_error(push_to_hub, folder, "no-slash", token="x")
    assert "not an adapter folder" in one_line_error(push_to_hub, folder / WEIGHTS_NAME, "org/skill")


def test_convert_to_and_from_a_folder(base, tmp_path, capsys):
    """`convert --from ours --to folder` writes the folder save_pretrained writes (prompt format kept, base
    recorded); `--from folder --to ours` gives back the same tensors; an existing OUTPUT needs --overwrite."""
    model = adapted(base)
    single = mm_adapter.save_adapter(model, tmp_path / "skill.safetensors", extra_metadata={PROMPT_FORMAT_KEY: "QCM-T"})
    folder = tmp_path / "skill"
    argv = ["convert", "--from", "ours", "--to", "folder", "--base", str(base), str(single), str(folder)]
    assert command_here(argv, capsys) == (0, f"wrote {folder}\n", "")
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert config["prompt_format"] == "QCM-T" and config["base_model_spec"] == str(base)
    back = tmp_path / "back.safetensors"
    argv_back = ["convert", "--from", "folder", "--to", "ours", "--base", str(base), str(folder), str(back)]
    assert command_here(argv_back, capsys)[0] == 0
    assert all(torch.equal(read_adapter(back).layers[i][k], read_adapter(single).layers[i][k])
               for i in (2, 3) for k in ("prompt", "gate"))
    code, _, err = command_here(argv, capsys)
    assert code == 2 and "already exists" in err and err.count("\n") == 1


def test_generate_takes_folders_and_hub_ids(base, tmp_path, capsys, offline_hub):
    """`generate --adapter DIR org/name --use NAME`: a folder and a hub id (from the cache) are read, named by the
    folder and the repo, and answer as the same adapters would."""
    save_pretrained(adapted(base, seed=1), tmp_path / "alpha")
    save_pretrained(adapted(base, seed=2), tmp_path / "beta")
    cache_repo(offline_hub, "org/beta", {COMMIT_A: tmp_path / "beta"}, {"main": COMMIT_A})
    common = ["generate", "--base", str(base), "--instruction", "What colour is the sky ?", "--temperature", "0",
              "--max-new-tokens", "4"]
    answers = {}
    for use, adapters in (("alpha", [tmp_path / "alpha", "org/beta"]), ("beta", [tmp_path / "alpha", "org/beta"]),
                          ("beta-folder", [tmp_path / "beta"])):
        argv = [*common, "--adapter", *map(str, adapters), *(["--use", use] if use != "beta-folder" else [])]
        code, out, err = command_here(argv, capsys)
        assert code == 0, err
        answers[use] = out
    assert answers["beta"] == answers["beta-folder"] != answers["alpha"]


def test_demo_serve_and_eval_take_folders_and_hub_ids(tmp_path, capsys, offline_hub):
    """`demo --adapter DIR` (a visual adapter converted to a folder) answers as the single file does; the serve
    job's predictor loads a hub id; `eval scienceqa --adapter org/name` gives the predictions of the file."""
    files = make_demo_files(tmp_path / "demo")
    for name, single in (("visual", files.visual), ("text", files.text_only)):
        argv = ["convert", "--from", "ours", "--to", "folder", "--base", str(files.base), str(single),
                str(tmp_path / name)]
        assert command_here(argv, capsys)[0] == 0
    cache_repo(offline_hub, "org/text", {COMMIT_A: tmp_path / "text"}, {"main": COMMIT_A})
    demo = ["demo", "--base", str(files.base), "--question", QUESTION, "--choices", *CHOICES, "--image",
            str(files.red), "--adapter"]
    by_file, by_folder = (command_here([*demo, str(path)], capsys) for path in (files.visual, tmp_path / "visual"))
    assert by_file[0] == 0 and by_file[:2] == by_folder[:2]
    served = load_predictor(ServeConfig(adapter="org/text", model=ModelOptions(base=str(files.base))))
    assert served.adapter_name == "text" and "adapter text" in served.describe()
    data = official_layout(tmp_path / "data")
    runs = {}
    for label, adapter in (("file", files.text_only), ("hub", "org/text")):
        out = tmp_path / f"eval-{label}"
        argv = ["eval", "scienceqa", "--base", str(files.base), "--data", str(data), "--split", "val", "--out",
                str(out), "--adapter", str(adapter), "--bootstrap", "0", "--no-progress", "--name", "tiny"]
        code, _, err = command_here(argv, capsys)
        assert code == 0, err
        runs[label] = load_predictions(out / "predictions.json").results
    assert runs["hub"] == runs["file"]


def test_an_adapter_that_is_nowhere_is_one_line_naming_it(tmp_path, capsys, offline_hub):
    """An --adapter that is no file, no folder and not in the hub cache is one line and exit 2 (no traceback)."""
    files = make_demo_files(tmp_path / "demo")
    argv = ["demo", "--base", str(files.base), "--question", QUESTION, "--choices", *CHOICES, "--adapter",
            "org/nowhere"]
    code, out, err = command_here(argv, capsys)
    assert code == 2 and err.count("\n") == 1 and out == ""
    assert err.startswith("error: org/nowhere: no such adapter file or folder here, and not in the hub cache"), err


def test_a_trained_adapter_file_records_the_base_spec(base, tmp_path):
    """The adapter a training job writes names the base it was trained on (the spec given as --base), so its folder
    and model card can say which base to load."""
    result = finetune_here(base, write_records(tmp_path / "data.json", records(8)), tmp_path / "run", epochs=1)
    source = json.loads(read_adapter(result.adapter_path).extra_metadata["base_source"])
    assert source["spec"] == source["name_or_path"] == str(base)
