"""The demo web server (``mm-adapter serve``): HTTP checks of every bad upload (one line, the server keeps serving),
binary-exact uploads, concurrent requests, the documented ``mm-adapter serve`` in a real process; then
the real page in headless Debian Chromium driven by Playwright.

The browser tests skip (with the reason) where /usr/bin/chromium (or $DEMO_CHROMIUM) or the playwright
package is missing.
Set DEMO_SCREENSHOT=path.png to keep a screenshot of the page with an answer.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import signal
import subprocess
import threading
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from entry_point import MM_ADAPTER, default_ctrl_c
from PIL import Image
from test_demo_predictor import CHOICES, QUESTION, DemoFiles, make_demo_files, noise_png, png
from test_eval_run import single_thread  # noqa: F401 (autouse fixture)

from mm_adapter.cli import main
from mm_adapter.demo.server import MAX_BODY, PAGE, build_server, parse_choices
from mm_adapter.jobs.configs.answering import ServeConfig
from mm_adapter.jobs.demo import load_predictor
from mm_adapter.model.config import ModelOptions

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("DEMO_CHROMIUM", "/usr/bin/chromium"))  # Debian's package
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> DemoFiles:
    return make_demo_files(tmp_path_factory.mktemp("web"))


@pytest.fixture(scope="module")
def server(files):
    """The serve job's predictor (from its config) behind the demo server on a free port, in a thread."""
    config = ServeConfig(adapter=str(files.visual), port=0, model=ModelOptions(base=str(files.base), device="cpu"))
    demo = build_server(load_predictor(config), config.host, config.port)
    thread = threading.Thread(target=demo.serve_forever, daemon=True)
    thread.start()
    yield demo
    demo.shutdown()
    demo.server_close()


def multipart(fields: dict[str, str | tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body as browsers send it: text fields and (file name, bytes) files."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        if isinstance(value, tuple):
            head = f'Content-Disposition: form-data; name="{name}"; filename="{value[0]}"\r\n' \
                   f"Content-Type: application/octet-stream\r\n\r\n"
            parts.append(f"--{boundary}\r\n{head}".encode() + value[1] + b"\r\n")
        else:
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def post(url: str, body: bytes, content_type: str) -> tuple[int, dict]:
    request = urllib.request.Request(url + "predict", data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def ask(url: str, image: tuple[str, bytes] | None, choices: str = "\n".join(CHOICES), **extra) -> tuple[int, dict]:
    fields = {"question": QUESTION, "choices": choices, "context": "", **extra}
    if image is not None:
        fields["image"] = image
    return post(url, *multipart(fields))


def test_page_is_self_contained(server):
    """The page (the packaged page.html with the model filled in) names what answers and fetches nothing from any
    other address; the server listens on this machine only by default."""
    with urllib.request.urlopen(server.url, timeout=10) as response:
        page = response.read().decode()
    assert "mm-adapter" in page and "image encoder mm-tiny-vit" in page and "{{MODEL}}" not in page
    assert not re.search(r"https?:|['\"(]//", page)  # no address outside this server, not even scheme-relative
    assert server.url.startswith("http://127.0.0.1:")
    assert PAGE.name == "page.html" and "{{MODEL}}" in PAGE.read_text(encoding="utf-8")


def test_upload_bytes_arrive_exactly_and_choices_may_be_comma_separated(server):
    """Binary uploads reach the predictor byte for byte (same probabilities as calling it here); choices may be one
    per line or comma-separated; no file chosen is answered from the text with a note."""
    image = noise_png(5)  # binary bytes with CR, LF and NUL in them
    assert b"\r" in image and b"\0" in image
    status, data = ask(server.url, ("noise.png", image))
    assert status == 200 and data["image_used"] and data["note"] is None
    expected = server.predictor.predict(image, QUESTION, CHOICES)
    assert [o["probability"] for o in data["options"]] == expected.probabilities
    assert (data["letter"], data["text"]) == (expected.letter, expected.text)
    status, data = ask(server.url, None, choices="Solution A, Solution B,")
    assert status == 200 and [o["text"] for o in data["options"]] == ["Solution A", "Solution B"]
    assert not data["image_used"] and "no image given" in data["note"]
    assert parse_choices("a\n\n b \n") == ["a", "b"] and parse_choices("a, b,, c") == ["a", "b", "c"]


@pytest.mark.parametrize("case, message, code", [
    ("not an image", "notes.txt: not an image", 400),
    ("truncated", "broken.png: damaged or truncated image", 400),
    ("too many pixels", "huge.png: image too large", 400),
    ("empty file", "empty.png: the image is empty", 400),
    ("one choice", "need at least 2 choices, got 1", 400),
    ("missing field", "missing the field(s): choices", 400),
    ("not multipart", "expected a multipart/form-data upload", 400),
    ("too many bytes", "upload too large (41.0 MiB; at most 41 MiB", 413),
    ("image over its bound", "big.png: image file too large (21.0 MiB", 400),
])
def test_bad_requests_are_one_line_and_the_server_keeps_serving(server, monkeypatch, case, message, code):
    """Every bad upload or form gets its HTTP status and one line; the next request is answered as usual."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # the server runs in this process; 48x48 images pass
    red = ("red.png", png("red", (20, 20)))
    requests = {
        "not an image": lambda: ask(server.url, ("notes.txt", b"just some notes\n")),
        "truncated": lambda: ask(server.url, ("broken.png", noise_png()[:400])),
        "too many pixels": lambda: ask(server.url, ("huge.png", png("white", (100, 100)))),
        "empty file": lambda: ask(server.url, ("empty.png", b"")),
        "one choice": lambda: ask(server.url, red, choices="only this one"),
        "missing field": lambda: post(server.url, *multipart({"question": QUESTION, "image": red})),
        "not multipart": lambda: post(server.url, b"question=hi", "application/x-www-form-urlencoded"),
        "too many bytes": lambda: ask(server.url, ("big.png", bytes(MAX_BODY))),
        "image over its bound": lambda: ask(server.url, ("big.png", bytes(21 * 2**20))),  # the body has room for it
    }
    status, data = requests[case]()
    assert status == code and message in data["error"] and "\n" not in data["error"]
    status, data = ask(server.url, red)  # the next request is answered as usual
    assert status == 200 and math.isclose(sum(o["probability"] for o in data["options"]), 1, abs_tol=1e-5)


def test_start_up_problems_are_one_line_and_exit_2(server, files, capfd):
    """``mm-adapter serve`` with an unreadable adapter, a busy port or a bad port: exit 2, the last stderr line is
    one "error:" line naming the problem."""
    port = str(server.server_address[1])
    cases = {"not a readable safetensors file": ["--adapter", str(files.red)],
             f"cannot listen on 127.0.0.1:{port} (Address already in use)": ["--adapter", str(files.visual),
                                                                               "--port", port],
             "--port: must be <= 65535": ["--port", "70000"]}
    for message, argv in cases.items():
        capfd.readouterr()
        code = main(["serve", "--base", str(files.base), "--device", "cpu", *argv])
        err = capfd.readouterr().err.splitlines()
        assert code == 2 and err[-1].startswith("error: ") and message in err[-1], err


@pytest.mark.parametrize("stop, code, last_line", [(signal.SIGINT, 130, "interrupted"),
                                                   (signal.SIGTERM, 143, "terminated (SIGTERM)")])
def test_serve_in_a_real_process_runs_until_interrupted(files, tmp_path, stop, code, last_line):
    """``mm-adapter serve`` (the documented command) starts the server in a real process, says its
    address on stdout, answers /health with what answers the questions, and stops on Ctrl-C (exit 130) or
    SIGTERM (exit 143) with one line, no traceback."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    command = [MM_ADAPTER, "serve", "--base", str(files.base), "--adapter",
               str(files.visual), "--port", "0", "--device", "cpu"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               cwd=tmp_path, preexec_fn=default_ctrl_c)
    try:
        line = process.stdout.readline()
        found = re.match(r"demo at (http://127\.0\.0\.1:\d+/) \(", line)
        assert found, (line, process.stderr.read() if process.poll() is not None else "")
        with urllib.request.urlopen(found.group(1) + "health", timeout=30) as response:
            health = json.loads(response.read())
        assert "adapter visual" in health["model"] and "image encoder mm-tiny-vit" in health["model"]
        before = []  # the request's log line is written once its answer is out: wait for it, or it may come last
        while not before or '"GET /health' not in before[-1]:
            before.append(process.stderr.readline())
            assert before[-1], before
        process.send_signal(stop)
        assert process.wait(timeout=30) == code
        err = process.stderr.read()
        assert err.splitlines()[-1] == last_line and "Traceback" not in "".join(before) + err
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_concurrent_requests_get_their_own_answers(server):
    """Requests arriving together each get the answer for their own image (the same as sequential predictions)."""
    images = [("a.png", png("red")), ("b.png", noise_png(1)), ("c.png", png("blue"))] * 2
    expected = [server.predictor.predict(data, QUESTION, CHOICES).probabilities for _, data in images]
    with ThreadPoolExecutor(max_workers=len(images)) as pool:
        results = list(pool.map(lambda image: [o["probability"] for o in ask(server.url, image)[1]["options"]], images))
    assert results == expected


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not found (Debian package chromium)")
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("the playwright Python package is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def read_answer(page) -> tuple[str, list[tuple[str, float, float]]]:
    """The answer line and each option row's (text, shown percent, probability) as the page shows them."""
    page.wait_for_selector("#result", state="visible")
    rows = page.query_selector_all("#options .option")
    return page.inner_text("#answer"), [
        (row.query_selector(".text").inner_text(), float(row.query_selector(".percent").inner_text().rstrip("%")),
         float(row.get_attribute("data-probability"))) for row in rows]


def test_the_page_answers_uploads_and_explains_bad_ones(server, browser, files):
    """In a real browser: the page answers an upload (answer line, one row per option, percentages summing to 100),
    explains a bad upload in one line and keeps working; it requests nothing outside this server."""
    requests: list[str] = []
    page = browser.new_page(viewport={"width": 1000, "height": 640})
    page.on("request", lambda request: requests.append(request.url))
    page.goto(server.url)
    page.set_input_files("#image", str(files.red))
    page.fill("#question", QUESTION)
    page.fill("#choices", "\n".join(CHOICES))
    page.click("#submit")
    answer, rows = read_answer(page)
    assert [text for text, _, _ in rows] == CHOICES
    assert math.isclose(sum(p for _, _, p in rows), 1, abs_tol=1e-5)
    assert abs(sum(shown for _, shown, _ in rows) - 100) < 0.2
    best = max(range(len(rows)), key=lambda i: rows[i][2])
    assert answer == f"Answer: ({'ABC'[best]}) {CHOICES[best]}"
    assert page.query_selector_all("#options .option.chosen")[0].inner_text().startswith(f"({'ABC'[best]})")
    assert page.is_visible("#preview") and not page.is_visible("#error")
    if os.environ.get("DEMO_SCREENSHOT"):
        page.screenshot(path=os.environ["DEMO_SCREENSHOT"], full_page=True)

    page.set_input_files("#image", files={"name": "notes.png", "mimeType": "image/png", "buffer": b"not a picture"})
    page.click("#submit")
    page.wait_for_selector("#error", state="visible")
    assert page.inner_text("#error") == "notes.png: not an image (PIL cannot identify the file format)"
    assert not page.is_visible("#result")

    page.set_input_files("#image", str(files.noise))
    page.fill("#choices", "Solution A, Solution B")
    page.click("#submit")
    answer, rows = read_answer(page)  # the server survived the bad upload
    assert [text for text, _, _ in rows] == ["Solution A", "Solution B"] and not page.is_visible("#error")
    assert math.isclose(sum(p for _, _, p in rows), 1, abs_tol=1e-5)
    page.close()
    assert requests and all(url.startswith((server.url, "blob:" + server.url[:-1], "data:")) for url in requests), \
        requests


def test_closing_lets_a_running_handler_finish_before_the_process_may_exit(files):
    """Issue 23, class 10: ``server_close`` stops accepting, then waits (up to ``CLOSE_GRACE``) for a handler still
    inside a request, here an upload whose body arrives 0.5 s after the close began: the client gets its answer
    and no handler thread is left running when the close returns (a daemon thread inside a write or a computation
    while the interpreter shuts down aborted the process, SIGABRT instead of exit 130/143)."""
    import socket
    import time

    config = ServeConfig(adapter=str(files.visual), port=0, model=ModelOptions(base=str(files.base), device="cpu"))
    demo = build_server(load_predictor(config), config.host, config.port)
    thread = threading.Thread(target=demo.serve_forever, daemon=True)
    thread.start()
    body, content_type = multipart({"question": QUESTION, "choices": "\n".join(CHOICES), "context": ""})
    head = (f"POST /predict HTTP/1.0\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    client = socket.create_connection(demo.server_address[:2], timeout=30)
    client.sendall(head + body[:10])
    deadline = time.monotonic() + 10
    while not demo.running_handlers() and time.monotonic() < deadline:
        time.sleep(0.01)
    handlers = demo.running_handlers()
    assert len(handlers) == 1
    threading.Timer(0.5, lambda: client.sendall(body[10:])).start()
    demo.shutdown()
    started = time.monotonic()
    demo.server_close()
    assert not handlers[0].is_alive() and demo.running_handlers() == []
    assert time.monotonic() - started < demo.CLOSE_GRACE
    answer = client.recv(1 << 16).decode()
    client.close()
    assert answer.startswith("HTTP/1.0 200") and '"options"' in answer, answer[:300]


def test_a_handler_that_outlives_the_grace_is_abandoned_and_the_command_exits_cleanly(files, tmp_path):
    """A client stalled mid-upload past the grace: ``mm-adapter serve`` stopped by SIGTERM still exits 143 with its
    one line (the handler is abandoned and the process leaves without interpreter shutdown)."""
    import socket

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([MM_ADAPTER, "serve", "--base", str(files.base), "--adapter", str(files.visual),
                                "--port", "0", "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env, cwd=tmp_path)
    try:
        found = re.match(r"demo at http://127\.0\.0\.1:(\d+)/ \(", process.stdout.readline())
        assert found
        client = socket.create_connection(("127.0.0.1", int(found.group(1))), timeout=30)
        client.sendall(b"POST /predict HTTP/1.0\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                       b"Content-Length: 100000\r\n\r\n--x")
        with urllib.request.urlopen(f"http://127.0.0.1:{found.group(1)}/health", timeout=30):
            pass
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 143
        err = process.stderr.read()
        assert err.splitlines()[-1] == "terminated (SIGTERM)" and "Fatal Python error" not in err, err
        client.close()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
