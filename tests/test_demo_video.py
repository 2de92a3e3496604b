"""The demo with video clips (issue 16): a frames=3 visual adapter answers a GIF, MP4 or WebM clip from its 3 sampled
frames in time order, through the predictor, ``mm-adapter demo --video`` and the web page, in real headless Chromium
too (the clip previews and plays, the answer and bars as for images). A clip that is not a video, too large, empty,
without frames, shorter than the adapter's frames or truncated is one line naming the file; the server keeps serving.

The browser test skips like tests/test_demo_web.py where Chromium or playwright is missing. Debian's Chromium plays
both H.264 (MP4) and VP9 (WebM), so both are checked for playback.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from clips import clip, frames_of
from test_demo_predictor import CHOICES, QUESTION, adapted_model, png, save_visual_adapter
from test_demo_web import ask, browser, read_answer  # noqa: F401 (browser: the fixture)
from test_eval_run import make_tokenizer, single_thread  # noqa: F401 (autouse fixture)

from mm_adapter.cli import main
from mm_adapter.cli.reports import format_prediction
from mm_adapter.demo.predictor import Predictor
from mm_adapter.demo.server import MAX_BODY, build_server
from mm_adapter.encoders.clip import TINY_VIT, VisualConfig
from mm_adapter.encoders.feature_cache import MAX_IMAGE_BYTES
from mm_adapter.encoders.video import clip_frames

FRAMES = 3
SIX = ["red", "green", "blue", "yellow", "white", "black"]  # sampled at 3 frames: green, yellow, black
RGB = ["red", "green", "blue"]  # reversed, the middle frame stays: only the frames' order tells the two apart
KINDS = ("gif", "mp4", "webm")


@dataclass(frozen=True)
class ClipFiles:
    base: Path
    adapter: Path  # a visual adapter with frames=3 (its projection's last layer is N(0, 1): frames matter)
    clips: dict[str, Path]  # kind -> six.<kind>, a 6-frame clip
    bad: dict[str, tuple[Path, str]]  # case -> (file, the start of its one-line error)


def bad_clips(folder: Path) -> dict[str, tuple[Path, str]]:
    good = clip(SIX, "mp4")
    cases = {
        "not a video": ("notes.mp4", b"just some notes, not a clip\n", "not a video clip"),
        "too large": ("big.mp4", good + bytes(MAX_IMAGE_BYTES + 2**19 - len(good)),
                      "video file too large (20.5 MiB, limit 20 MiB)"),
        "empty": ("empty.webm", b"", "the clip is empty (0 bytes)"),
        "no frames (mp4)": ("none.mp4", clip([], "mp4"), "the clip has no frames"),
        "no frames (webm)": ("none.webm", clip([], "webm"), "the clip has no frames"),
        "fewer frames": ("two.gif", clip(SIX[:2], "gif"), "the clip has 2 frames, fewer than frames=3"),
        "truncated": ("cut.mp4", good[: len(good) // 2], "damaged or truncated video clip"),
    }
    found = {}
    for case, (name, data, message) in cases.items():
        (folder / name).write_bytes(data)
        found[case] = (folder / name, f"{name}: {message}")
    return found


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> ClipFiles:
    folder = tmp_path_factory.mktemp("video")
    make_tokenizer().save_pretrained(folder / "base")
    model = adapted_model(folder / "base")
    config = VisualConfig(clip_model=TINY_VIT, clip_layers=2, frames=FRAMES)
    adapter = save_visual_adapter(model, folder / "clip3.safetensors", config)
    clips = {kind: folder / f"six.{kind}" for kind in KINDS}
    for kind, path in clips.items():
        path.write_bytes(clip(SIX, kind))
    return ClipFiles(folder / "base", adapter, clips, bad_clips(folder))


@pytest.fixture(scope="module")
def predictor(files) -> Predictor:
    return Predictor.load(str(files.base), files.adapter)


def explicit_offset(predictor: Predictor, frames) -> torch.Tensor:
    """The prompt offset of these frames, in this order, straight through the encoder and projection."""
    encoder, projection = predictor.visual.encoder, predictor.visual.projection
    with torch.no_grad():
        features = encoder(torch.stack([encoder.preprocess(frame) for frame in frames]))
        return projection(features[None], torch.tensor([True]))


def answer_with(predictor: Predictor, offset: torch.Tensor, monkeypatch) -> list[float]:
    """The predictor's probabilities when its visual path gives ``offset`` (a stand-in still passes the checks)."""
    with monkeypatch.context() as patch:
        patch.setattr(predictor.visual, "offset", lambda image, name: offset)
        return predictor.predict(png("gray"), QUESTION, CHOICES).probabilities


def apart(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("kind", KINDS)
def test_a_clip_is_answered_from_its_sampled_frames_in_time_order(predictor, files, monkeypatch, kind):
    """A clip's probabilities sum to 1, it is used (differs from no media), path and bytes agree; the answer equals
    the one from its 3 sampled frames fed explicitly in time order (for a GIF: the frames it was made of, 1, 3 and 5
    of 6), and not the one from them reversed; a clip played backwards gets another answer (its middle frame and its
    frames' mean are the same, only the order differs)."""
    path = files.clips[kind]
    answer = predictor.predict(path, QUESTION, CHOICES)
    assert math.isclose(sum(answer.probabilities), 1, abs_tol=1e-5) and answer.image_used and answer.note is None
    assert apart(answer.probabilities, predictor.predict(None, QUESTION, CHOICES).probabilities) > 1e-3
    assert predictor.predict(path.read_bytes(), QUESTION, CHOICES).probabilities == answer.probabilities
    frames = frames_of(SIX)[1::2] if kind == "gif" else clip_frames(path.read_bytes(), path.name, FRAMES)
    np.testing.assert_allclose(answer_with(predictor, explicit_offset(predictor, frames), monkeypatch),
                               answer.probabilities, atol=1e-6)
    backwards = answer_with(predictor, explicit_offset(predictor, frames[::-1]), monkeypatch)
    assert apart(backwards, answer.probabilities) > 1e-3
    forward, reverse = (predictor.predict(clip(colours, kind), QUESTION, CHOICES).probabilities
                        for colours in (RGB, RGB[::-1]))
    assert apart(forward, reverse) > 1e-3
    if kind == "gif":  # lossless: the reversed clip is exactly the reversed frames
        np.testing.assert_allclose(reverse, answer_with(predictor, explicit_offset(predictor, frames_of(RGB)[::-1]),
                                                        monkeypatch), atol=1e-6)


def test_a_still_image_is_held_for_every_frame(predictor):
    """A frames=3 adapter still answers a still image (held for the 3 frames), and says clips are seen as 3 frames."""
    still = predictor.predict(png("red"), QUESTION, CHOICES)
    assert still.image_used and math.isclose(sum(still.probabilities), 1, abs_tol=1e-5)
    assert "clips as 3 ordered frames" in predictor.describe()


def demo_cli(files: ClipFiles, flag: str, media: Path, capfd) -> tuple[int, str, str]:
    capfd.readouterr()
    code = main(["demo", "--base", str(files.base), "--adapter", str(files.adapter), "--question", QUESTION,
                 "--choices", *CHOICES, flag, str(media)])
    out, err = capfd.readouterr()
    return code, out, err


@pytest.mark.parametrize("flag, kind", [("--video", "mp4"), ("--image", "webm")])
def test_the_cli_answers_a_clip(files, predictor, capfd, flag, kind):
    """``mm-adapter demo --video clip.mp4`` (or ``--image`` for a clip) prints the predictor's answer for the clip."""
    code, out, err = demo_cli(files, flag, files.clips[kind], capfd)
    assert code == 0, err
    assert out == format_prediction(predictor.predict(files.clips[kind], QUESTION, CHOICES)) + "\n"
    assert "clips as 3 ordered frames" in err


@pytest.mark.parametrize("case", ["not a video", "too large", "no frames (mp4)", "fewer frames", "truncated"])
def test_the_cli_refuses_a_bad_clip_in_one_line(files, capfd, case):
    """A bad clip: exit 2, nothing on stdout, one "error:" line naming the file, last on stderr, no traceback (a clip
    shorter than the adapter's frames is known once the adapter is loaded: its description comes first)."""
    path, message = files.bad[case]
    code, out, err = demo_cli(files, "--video", path, capfd)
    lines = err.splitlines()
    assert code == 2 and out == "" and "Traceback" not in err, err
    assert lines[-1].startswith(f"error: {path.parent}/{message}") and sum(line.startswith("error:")
                                                                          for line in lines) == 1, err
    if case != "fewer frames":
        assert len(lines) == 1, err  # refused before any model is loaded


@pytest.fixture(scope="module")
def server(predictor):
    """The demo server for the frames=3 adapter on a free port, in a thread."""
    demo = build_server(predictor, port=0)
    thread = threading.Thread(target=demo.serve_forever, daemon=True)
    thread.start()
    yield demo
    demo.shutdown()
    demo.server_close()


def test_a_clip_upload_is_answered_as_the_predictor_answers_it(server, files, predictor):
    """An uploaded clip (each kind) reaches the predictor byte for byte: the same probabilities as calling it here."""
    for path in files.clips.values():
        status, data = ask(server.url, (path.name, path.read_bytes()))
        assert status == 200 and data["image_used"], data
        expected = predictor.predict(path, QUESTION, CHOICES).probabilities
        assert [option["probability"] for option in data["options"]] == expected


@pytest.mark.parametrize("case", [*["not a video", "too large", "empty", "no frames (mp4)", "no frames (webm)",
                                    "fewer frames", "truncated"], "over the body limit"])
def test_a_bad_clip_upload_is_one_line_and_the_server_keeps_serving(server, files, case):
    """Each bad clip gets a 4xx and one line naming the file (a body over MAX_BODY is refused unread: 413, its size);
    the next request is answered as usual."""
    if case == "over the body limit":
        name, data, message, code = "huge.mp4", bytes(MAX_BODY), "upload too large (41.0 MiB; at most 41 MiB", 413
    else:
        path, message = files.bad[case]
        name, data, code = path.name, path.read_bytes(), 400
    status, answer = ask(server.url, (name, data))
    assert status == code and answer["error"].startswith(message) and "\n" not in answer["error"], answer
    status, answer = ask(server.url, ("six.webm", files.clips["webm"].read_bytes()))
    assert status == 200 and math.isclose(sum(o["probability"] for o in answer["options"]), 1, abs_tol=1e-5)


PLAYING = """() => { const v = document.getElementById("preview-video");
  return v.offsetParent !== null && v.readyState >= 2 && !v.paused && v.currentTime > 0; }"""


def submit(page) -> None:
    page.click("#submit")  # disables the button at once; it is enabled again once the answer or error is shown
    page.wait_for_selector("#submit:enabled")


def test_the_page_plays_a_clip_answers_it_and_explains_bad_ones(server, browser, files, predictor):  # noqa: F811
    """In real Chromium: an MP4 and a WebM clip preview in the <video>, which plays (time advances); a GIF previews in
    the <img>; each is answered with the bars (percentages summing to 100, the predictor's probabilities); a .mp4 that
    is not a video, an oversized clip and a clip with no frames each show one line in #error, and the next upload is
    answered; nothing is requested outside this server."""
    requests: list[str] = []
    page = browser.new_page(viewport={"width": 1000, "height": 640})
    page.on("request", lambda request: requests.append(request.url))
    page.goto(server.url)
    page.fill("#question", QUESTION)
    page.fill("#choices", "\n".join(CHOICES))

    def answered(path: Path) -> None:
        submit(page)
        answer, rows = read_answer(page)
        expected = predictor.predict(path, QUESTION, CHOICES)
        assert [p for _, _, p in rows] == expected.probabilities and [text for text, _, _ in rows] == CHOICES
        assert abs(sum(shown for _, shown, _ in rows) - 100) < 0.2 and not page.is_visible("#error")
        assert answer == f"Answer: ({expected.letter}) {expected.text}"

    for kind in ("mp4", "webm"):
        page.set_input_files("#image", str(files.clips[kind]))
        page.wait_for_function(PLAYING, timeout=10_000)
        start = page.evaluate("document.getElementById('preview-video').currentTime")
        page.wait_for_function(f"document.getElementById('preview-video').currentTime !== {start}", timeout=10_000)
        assert not page.is_visible("#preview")
        answered(files.clips[kind])

    page.set_input_files("#image", str(files.clips["gif"]))
    page.wait_for_selector("#preview", state="visible")
    assert not page.is_visible("#preview-video") and page.eval_on_selector("#preview", "e => e.naturalWidth") == 32
    answered(files.clips["gif"])

    for case in ("not a video", "too large", "no frames (mp4)"):
        path, message = files.bad[case]
        page.set_input_files("#image", str(path))
        submit(page)
        error = page.inner_text("#error")
        assert page.is_visible("#error") and error.startswith(message) and "\n" not in error, error
        assert not page.is_visible("#result")
        page.set_input_files("#image", str(files.clips["webm"]))
        answered(files.clips["webm"])  # the server kept serving
    page.close()
    assert requests and all(url.startswith((server.url, "blob:" + server.url[:-1], "data:")) for url in requests), \
        requests
