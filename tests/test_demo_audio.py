"""Sound in the demo web page (``mm-adapter serve``), with the tiny adapter of tests/test_audio_train.py that learned to
tell a tone's pitch: uploads in every container are heard by their content, a clip's sound track is heard when no
separate sound is given, bad sounds are one line and the next request is answered, ``serve --audio-encoder`` finds
a moved encoder; then the real page in headless Debian Chromium: a file upload, bad uploads in the page's error
area, and a recording from the microphone (Chromium's fake capture device fed from a WAV made here), answered as
``demo --audio`` answers that WAV.

The browser tests skip like tests/test_demo_web.py where Chromium or playwright is missing.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_audio_train import KINDS, PITCHES, setup, trained  # noqa: F401 (setup, trained: the fixtures)
from test_demo_web import CHROMIUM, CHROMIUM_ARGS, browser, multipart, post, read_answer  # noqa: F401 (browser)
from test_eval_run import single_thread  # noqa: F401 (autouse fixture)
from tiny_audio import clip_with_sound, encode_audio

from mm_adapter.cli import main
from mm_adapter.demo.predictor import Predictor
from mm_adapter.demo.server import MAX_BODY, build_server
from mm_adapter.encoders.audio.decode import MAX_AUDIO_SECONDS, SAMPLE_RATE, audio_kind, decode_audio
from mm_adapter.jobs.configs.answering import ServeConfig
from mm_adapter.jobs.demo import load_predictor
from mm_adapter.model.config import ModelOptions

QUESTION = "Which pitch is the sound?"
CHOICES = list(PITCHES)  # low, middle, high: the trained adapter answers with the pitch it hears
COLOURS = ["red", "green", "blue", "white", "black", "red"]
TRAINED_SECONDS = (0.6, 1.4)  # the sounds' lengths in test_audio_train's data: the tiny adapter knows no others
RECORD_SECONDS = 0.9  # Stop once the page's recording clock shows this: about the fake microphone's 1 s WAV


def sound(pitch: str, kind: str = "flac", rate: int = 44_100, channels: int = 2, seconds: float = 1.0) -> bytes:
    return encode_audio(kind, seconds, rate, channels, PITCHES[pitch])


def pitch_of(samples: np.ndarray) -> float:
    """The strongest frequency in Hz of 16 kHz samples."""
    return float(np.argmax(np.abs(np.fft.rfft(samples)))) * SAMPLE_RATE / len(samples)


def probabilities(answer: dict) -> list[float]:
    return [option["probability"] for option in answer["options"]]


@pytest.fixture(scope="module")
def hearing(setup, trained) -> Predictor:  # noqa: F811
    """The serve job's predictor (from its config) with the trained audio adapter."""
    folder, _ = setup
    return load_predictor(ServeConfig(adapter=str(trained), port=0,
                                      model=ModelOptions(base=str(folder / "base"), device="cpu")))


@pytest.fixture(scope="module")
def server(hearing):
    import threading

    demo = build_server(hearing, port=0)
    thread = threading.Thread(target=demo.serve_forever, daemon=True)
    thread.start()
    yield demo
    demo.shutdown()
    demo.server_close()


def ask(url: str, audio: tuple[str, bytes] | None = None, image: tuple[str, bytes] | None = None) -> tuple[int, dict]:
    fields = {"question": QUESTION, "choices": "\n".join(CHOICES), "context": ""}
    fields.update({name: file for name, file in (("audio", audio), ("image", image)) if file is not None})
    return post(url, *multipart(fields))


def test_a_sound_upload_is_heard_by_its_content_in_every_container(server, hearing):
    """WAV, FLAC, MP3, Ogg/Opus and M4A uploads (at odd rates and channel counts, all named sound.bin: the name tells
    nothing) are heard: the answer is the pitch, with the predictor's exact probabilities for the same bytes."""
    for kind, rate, channels in KINDS:
        for pitch in ("low", "high"):
            data = sound(pitch, kind, rate, channels)
            status, answer = ask(server.url, ("sound.bin", data))
            assert status == 200 and answer["audio_used"] and answer["note"] == "heard the sound", (kind, answer)
            assert answer["text"] == pitch, (kind, pitch, answer)
            assert probabilities(answer) == hearing.predict(None, QUESTION, CHOICES, audio=data).probabilities


@pytest.mark.parametrize("container", ["mp4", "webm"])
def test_a_clips_sound_track_is_heard_when_no_sound_is_given(server, hearing, container):
    """A clip with a sound track uploaded as the image is heard through its track (this adapter has no visual part:
    the picture is ignored and the answer says so); a separate sound, when given, is heard instead."""
    clip = clip_with_sound(COLOURS, PITCHES["high"], container)
    status, answer = ask(server.url, image=(f"clip.{container}", clip))
    assert status == 200 and answer["audio_used"] and not answer["image_used"], answer
    assert "heard the clip's sound track" in answer["note"] and answer["text"] == "high"
    assert probabilities(answer) == hearing.predict(None, QUESTION, CHOICES, audio=clip).probabilities
    low = sound("low")
    status, answer = ask(server.url, ("low.flac", low), (f"clip.{container}", clip))
    assert status == 200 and answer["text"] == "low" and "heard the sound" in answer["note"]
    assert probabilities(answer) == hearing.predict(None, QUESTION, CHOICES, audio=low).probabilities


def bad_sounds(folder: Path) -> dict[str, tuple[Path, str]]:
    """Bad sound files and the start of the one line each gets."""
    cases = {"not audio": ("notes.wav", b"just some notes\n" * 40, "notes.wav: not an audio file"),
             "truncated": ("cut.flac", sound("low", seconds=2.0)[:3000], "cut.flac: damaged or truncated FLAC"),
             "zero-length": ("empty.wav", b"", "empty.wav: the audio file is empty (0 bytes)"),
             "too long": ("long.ogg", encode_audio("ogg", MAX_AUDIO_SECONDS + 1), "long.ogg: audio too long ("),
             "too many bytes": ("big.wav", bytes(21 * 2**20), "big.wav: audio file too large (21.0 MiB")}
    found = {}
    for case, (name, data, message) in cases.items():
        (folder / name).write_bytes(data)
        found[case] = (folder / name, message)
    return found


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    return bad_sounds(tmp_path_factory.mktemp("bad-sounds"))


@pytest.mark.parametrize("case", ["not audio", "truncated", "zero-length", "too long", "too many bytes",
                                  "over the body limit"])
def test_a_bad_sound_upload_is_one_line_and_the_next_request_is_answered(server, bad, case):
    """Each bad sound gets a 4xx and one line naming the file (a body over MAX_BODY is refused unread: 413)."""
    if case == "over the body limit":
        name, data, message, code = "huge.wav", bytes(MAX_BODY), "upload too large (41.0 MiB; at most 41 MiB", 413
    else:
        path, message = bad[case]
        name, data, code = path.name, path.read_bytes(), 400
    status, answer = ask(server.url, (name, data))
    assert status == code and answer["error"].startswith(message) and "\n" not in answer["error"], answer
    status, answer = ask(server.url, ("high.wav", sound("high", "wav")))
    assert status == 200 and answer["text"] == "high"


def test_serve_takes_audio_encoder_where_the_encoder_moved(setup, trained, hearing, capfd):  # noqa: F811
    """With the Whisper folder moved, ``serve`` refuses in one line (exit 2, before listening) until
    ``--audio-encoder`` says where it is, and then hears as before; an encoder with other weights is refused."""
    folder, _ = setup
    whisper, moved = folder / "whisper", folder / "whisper-moved"
    serve = ["serve", "--base", str(folder / "base"), "--adapter", str(trained), "--port", "0", "--device", "cpu"]
    low = sound("low")
    shutil.move(whisper, moved)
    try:
        capfd.readouterr()
        assert main(serve) == 2
        err = capfd.readouterr().err.splitlines()
        assert err[-1].startswith("error: ") and str(whisper) in err[-1] and "demo at" not in "".join(err), err
        config = ServeConfig(adapter=str(trained), audio_encoder=str(moved), port=0,
                             model=ModelOptions(base=str(folder / "base"), device="cpu"))
        found = load_predictor(config)
        assert (found.predict(None, QUESTION, CHOICES, audio=low).probabilities
                == hearing.predict(None, QUESTION, CHOICES, audio=low).probabilities)
    finally:
        shutil.move(moved, whisper)
    assert main([*serve, "--audio-encoder", str(folder / "other-whisper")]) == 2
    err = capfd.readouterr().err.splitlines()
    assert err[-1].startswith("error: ") and "audio projection takes 128 features" in err[-1], err


# ---- the real page in Chromium -------------------------------------------------------------------------------------

def fill(page) -> None:
    page.fill("#question", QUESTION)
    page.fill("#choices", "\n".join(CHOICES))


def received_sounds(predictor: Predictor, monkeypatch) -> list[tuple[str | None, bytes | None]]:
    """What the server hands its predictor as each request's sound, (name, bytes), in order (Playwright does not
    see a body built from a Blob, so the server's side is where the recording is read back)."""
    received, predict = [], predictor.predict
    monkeypatch.setattr(predictor, "predict", lambda *args, **kwargs: received.append(
        (kwargs.get("audio_name"), kwargs.get("audio"))) or predict(*args, **kwargs))
    return received


def test_the_page_uploads_a_sound_and_explains_bad_ones(server, browser, hearing, bad, tmp_path):  # noqa: F811
    """In a real browser: a chosen sound file shows in an <audio> preview and is answered as the predictor hears it;
    each bad sound (not audio, truncated, zero-length, too long, too many bytes) and a microphone the browser does
    cannot open are one line in the page's error area, and the next request is answered."""
    page = browser.new_page(viewport={"width": 1000, "height": 800})
    page.goto(server.url)
    assert f"at most {MAX_AUDIO_SECONDS:g} s" in page.inner_text("form")
    fill(page)
    high = tmp_path / "high.m4a"
    high.write_bytes(sound("high", "m4a", 24_000, 2))
    page.set_input_files("#audio", str(high))
    page.wait_for_selector("#preview-audio", state="visible")
    page.click("#submit")
    answer, rows = read_answer(page)
    expected = hearing.predict(None, QUESTION, CHOICES, audio=high)
    assert answer == "Answer: (C) high" and [p for _, _, p in rows] == expected.probabilities
    for case, (path, message) in bad.items():
        page.set_input_files("#audio", str(path))
        page.click("#submit")
        page.wait_for_selector("#error", state="visible")
        error = page.inner_text("#error")
        assert error.startswith(message) and "\n" not in error and not page.is_visible("#result"), (case, error)
        page.set_input_files("#audio", str(high))
        page.click("#submit")
        assert read_answer(page)[0] == "Answer: (C) high" and not page.is_visible("#error"), case
    page.click("#record")  # this browser has no microphone (and would not be granted one): one line, still answering
    page.wait_for_selector("#error", state="visible")
    assert re.fullmatch(r"the microphone could not be opened \((NotFound|NotAllowed)Error: [^\n]+\)",
                        page.inner_text("#error")), page.inner_text("#error")
    assert not page.is_disabled("#submit") and not page.is_disabled("#record")
    page.click("#submit")
    assert read_answer(page)[0] == "Answer: (C) high" and not page.is_visible("#error")
    page.close()


@pytest.fixture(scope="module", params=["low", "high"])
def microphone(request, browser, tmp_path_factory):  # noqa: F811
    """A second Chromium (through the first one's Playwright: one may run per thread; it skips as that one does)
    whose fake microphone plays a WAV of one pitch (1 s, 48 kHz, looped by Chromium) made here; its permission
    prompt is answered yes."""
    wav = tmp_path_factory.mktemp("microphone") / f"{request.param}.wav"
    wav.write_bytes(sound(request.param, "wav", 48_000, 1))
    args = [*CHROMIUM_ARGS, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={wav}"]
    chromium = browser.browser_type.launch(executable_path=str(CHROMIUM), args=args)
    yield request.param, wav, chromium
    chromium.close()


def test_the_page_records_from_the_microphone_and_is_answered_as_the_cli_answers_the_file(
        server, hearing, setup, trained, microphone, capsys, tmp_path, monkeypatch):  # noqa: F811
    """Record (about 2 s) and stop: the page previews the recording and sends it (Chromium's MediaRecorder writes
    WebM/Opus); the server decodes it through the same bounded PyAV path, answers with the predictor's exact
    probabilities for those bytes, and gives the answer ``demo --audio`` gives for the WAV the fake microphone plays
    (the recording is that WAV looped: its pitch and length are checked). A file chosen afterwards replaces the
    recording; Clear leaves no sound."""
    pitch, wav, chromium = microphone
    folder, _ = setup
    assert main(["demo", "--question", QUESTION, "--choices", *CHOICES, "--base", str(folder / "base"),
                 "--adapter", str(trained), "--audio", str(wav)]) == 0
    cli_answer = capsys.readouterr().out.splitlines()[0]
    assert cli_answer == f"Answer: ({'ABC'[CHOICES.index(pitch)]}) {pitch}"

    received = received_sounds(hearing, monkeypatch)
    page = chromium.new_page(viewport={"width": 1000, "height": 800})
    page.goto(server.url)
    fill(page)
    page.click("#record")
    page.wait_for_selector("#record.recording")
    assert page.is_disabled("#submit")  # a half-made recording is not sent
    page.wait_for_function("s => parseFloat(document.querySelector('#recording-status').textContent"
                           ".replace('recording ', '')) >= s", arg=RECORD_SECONDS)
    page.click("#stop")
    page.wait_for_selector("#preview-audio", state="visible")
    status = page.inner_text("#recording-status")
    shown = float(re.match(r"recorded (\d+\.\d) s \(audio/webm", status).group(1))
    page.click("#submit")
    answer, rows = read_answer(page)
    [(name, data)] = received
    samples = decode_audio(data, name)
    seconds, heard = len(samples) / SAMPLE_RATE, pitch_of(samples)
    assert name == "recording.webm" and audio_kind(data) == "WebM/Matroska"
    assert abs(seconds - shown) < 0.3 and abs(heard - PITCHES[pitch]) < 0.01 * PITCHES[pitch]
    assert TRAINED_SECONDS[0] <= seconds <= TRAINED_SECONDS[1], \
        f"recorded {seconds:.2f} s: outside the lengths the tiny adapter was trained on, its answer means nothing"
    assert [p for _, _, p in rows] == hearing.predict(None, QUESTION, CHOICES, audio=data).probabilities
    recording = tmp_path / name
    recording.write_bytes(data)
    assert main(["demo", "--question", QUESTION, "--choices", *CHOICES, "--base", str(folder / "base"),
                 "--adapter", str(trained), "--audio", str(recording)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == answer == cli_answer
    cli = hearing.predict(None, QUESTION, CHOICES, audio=wav).probabilities
    print(f"\n{pitch}: recorded {shown} s as shown, {seconds:.3f} s decoded, {len(data):,} bytes "
          f"{audio_kind(data)}, strongest {heard:.1f} Hz (the WAV: {PITCHES[pitch]:g} Hz)")
    print(f"{pitch}: page {[round(p, 4) for _, _, p in rows]}, CLI on the WAV {[round(p, 4) for p in cli]}")

    other = "low" if pitch == "high" else "high"
    path = tmp_path / f"{other}.flac"
    path.write_bytes(sound(other))
    page.set_input_files("#audio", str(path))
    page.click("#submit")
    page.wait_for_function(f"document.querySelector('#answer').textContent.endsWith(' {other}')")
    assert received[-1] == (path.name, path.read_bytes())
    page.click("#clear-audio")
    assert not page.is_visible("#preview-audio")
    page.click("#submit")
    page.wait_for_function("document.querySelector('#note').textContent.includes('no image given')")
    assert received[-1] == ("uploaded sound", None)
    page.close()


def test_recording_on_an_insecure_page_says_how_to_open_it(server, browser):  # noqa: F811
    """Opened by another name than 127.0.0.1/localhost over plain HTTP (as from another machine with --host 0.0.0.0),
    the page is no secure context and the browser offers no microphone: Record says in one line how to open it."""
    port = server.server_address[1]
    chromium = browser.browser_type.launch(executable_path=str(CHROMIUM),
                                           args=[*CHROMIUM_ARGS, "--host-resolver-rules=MAP demo.test 127.0.0.1"])
    try:
        page = chromium.new_page()
        page.goto(f"http://demo.test:{port}/")
        assert page.evaluate("window.isSecureContext") is False
        page.click("#record")
        page.wait_for_selector("#error", state="visible")
        assert page.inner_text("#error").startswith("recording needs a secure page: open the demo at 127.0.0.1")
    finally:
        chromium.close()
