"""Issue 12, class 10: the demo server stays quiet and bounded under bad clients.

Real clients on raw sockets disconnect or reset mid-upload, stall in the request line, the headers or the body,
lie about Content-Length (more than they send, less than they send, past the body limit, past the drain limit,
not a number), send a body over the limit, garbage instead of HTTP, or a question too long for the model. After
each, the server still answers a good request, and it logged at most one line for the bad client, never a
traceback. The read timeout is the server's ``timeout`` (``mm-adapter serve --timeout``): 0.5 s here, so a stalled
client is let go at once. One test drives ``python -m mm_adapter serve`` in a real process.
"""

from __future__ import annotations

import errno
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from entry_point import default_ctrl_c
from test_demo_predictor import QUESTION, DemoFiles, make_demo_files, png
from test_demo_web import ask, multipart
from test_eval_run import single_thread  # noqa: F401 (autouse fixture)
from test_special_files import ENV, finishes

from mm_adapter.demo.server import DRAIN_LIMIT, MAX_BODY, build_server
from mm_adapter.jobs.configs.answering import ServeConfig
from mm_adapter.jobs.demo import load_predictor
from mm_adapter.model.config import ModelOptions

TIMEOUT = 0.5  # the server's read timeout in these tests
WORDY = "Which animal is a mammal? " * 60  # within the character bound, over the tiny model's 256 tokens


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> DemoFiles:
    return make_demo_files(tmp_path_factory.mktemp("hardening"))


@pytest.fixture(scope="module")
def server(files):
    """The serve job's predictor behind the demo server with a 0.5 s read timeout, in a thread."""
    config = ServeConfig(adapter=str(files.visual), port=0, timeout=TIMEOUT,
                         model=ModelOptions(base=str(files.base), device="cpu"))
    demo = build_server(load_predictor(config), config.host, config.port, config.timeout)
    demo.finished = []  # one entry per connection the server is done with (see ``settle``)
    close = demo.shutdown_request
    demo.shutdown_request = lambda request: (close(request), demo.finished.append(request))
    thread = threading.Thread(target=demo.serve_forever, daemon=True)
    thread.start()
    yield demo
    demo.shutdown()
    demo.server_close()


def upload(question: str = QUESTION) -> bytes:
    """A whole good request: headers and a multipart body with an image."""
    body, content_type = multipart({"question": question, "choices": "yes\nno", "context": "",
                                    "image": ("red.png", png("red"))})
    return head(len(body), content_type) + body


def head(length: int | str, content_type: str = "multipart/form-data; boundary=x") -> bytes:
    return (f"POST /predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


Address = tuple[str, int]


def connect(address: Address) -> socket.socket:
    return socket.create_connection(address, timeout=10)


def answer(client: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (within the client's 10 s timeout)."""
    chunks = []
    while chunk := client.recv(65536):
        chunks.append(chunk)
    client.close()
    return b"".join(chunks)


def status(response: bytes) -> int | None:
    found = re.match(rb"HTTP/1\.\d (\d{3}) ", response)
    return int(found.group(1)) if found else None


def sends_then_waits(address: Address, data: bytes) -> bytes:
    """A client that sends ``data`` and then waits for the answer (stalling if ``data`` is not a whole request)."""
    client = connect(address)
    client.sendall(data)
    return answer(client)


def sends_then_leaves(address: Address, data: bytes, reset: bool = False) -> None:
    """A client that sends ``data`` and closes (``reset``: with a TCP reset, as a killed browser tab does)."""
    client = connect(address)
    client.sendall(data)
    if reset:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    client.close()


def settle(server, connections: int, seconds: float = 10) -> None:
    """Wait until the server is done with ``connections`` connections in all (their last log line is written)."""
    deadline = time.monotonic() + seconds
    while len(server.finished) < connections:
        assert time.monotonic() < deadline, "the server is still busy with a connection"
        time.sleep(0.01)


def cut(request: bytes) -> bytes:
    """A request without the last 200 bytes of its body."""
    return request[:-200]


BAD_CLIENTS = {
    # name: (what the client does, the status it is answered with, None when it does not wait for one)
    "disconnects mid-upload": (lambda s: sends_then_leaves(s, cut(upload())), None),
    "resets mid-upload": (lambda s: sends_then_leaves(s, cut(upload()), reset=True), None),
    "stalls mid-body": (lambda s: sends_then_waits(s, cut(upload())), 408),
    "resets in the headers": (lambda s: sends_then_leaves(s, b"POST /predict HTTP/1.1\r\nContent-Le", reset=True),
                              None),
    "stalls in the headers": (lambda s: sends_then_waits(s, b"POST /predict HTTP/1.1\r\nContent-Le"), None),
    "says nothing": (lambda s: sends_then_waits(s, b""), None),
    "claims more than it sends": (lambda s: sends_then_waits(s, head(10_000) + b"--x\r\n"), 408),
    "claims less than it sends": (lambda s: sends_then_waits(s, head(40) + upload()[-400:]), 400),
    "claims past the body limit": (lambda s: sends_then_waits(s, head(MAX_BODY + 1) + b"--x\r\n"), 413),
    "claims past the drain limit": (lambda s: sends_then_waits(s, head(DRAIN_LIMIT + 1) + b"--x\r\n"), 413),
    "claims a negative length": (lambda s: sends_then_waits(s, head("-5") + b"--x\r\n"), 411),
    "sends a body over the limit": (lambda s: sends_then_waits(s, head(MAX_BODY + 1) + bytes(MAX_BODY + 1)), 413),
    "sends a malformed request line": (lambda s: sends_then_waits(s, b"GET / extra HTTP/1.1\r\n\r\n"), 400),
    "uses an unknown method": (lambda s: sends_then_waits(s, b"BREW /pot HTTP/1.1\r\n\r\n"), 501),
    "speaks TLS to it": (lambda s: sends_then_waits(s, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n"), None),
    "asks an over-long question": (lambda s: sends_then_waits(s, upload("Why? " * 5000)), 400),
    "asks past the model's context": (lambda s: sends_then_waits(s, upload(WORDY)), 400),
}


@pytest.mark.parametrize("name", list(BAD_CLIENTS))
def test_a_bad_client_is_one_log_line_and_the_server_keeps_answering(server, capfd, name):
    """Each bad client gets its status (or is let go within the 0.5 s timeout), costs at most one log line and no
    traceback, and the next good request is answered 200 with one log line."""
    act, expected = BAD_CLIENTS[name]
    done = len(server.finished)
    capfd.readouterr()
    started = time.monotonic()
    response = act(server.server_address[:2])
    settle(server, done + 1)
    err = capfd.readouterr().err
    if expected is not None:
        assert status(response) == expected, response[:300]
    assert time.monotonic() - started < 8  # stalls are let go after the server's short timeout, not its default 60 s
    assert err.count("\n") <= 1 and "Traceback" not in err, err
    code, data = ask(server.url, ("red.png", png("red")))
    settle(server, done + 2)
    assert code == 200 and "options" in data
    good = capfd.readouterr().err
    assert good.count("\n") == 1 and '"POST /predict HTTP/1.1" 200' in good, good


def test_the_answers_name_the_problem(server):
    """The bad requests that are answered are answered in one JSON line saying what was wrong."""
    expected = {"stalls mid-body": "the upload stalled", "claims past the body limit": "upload too large",
                "claims a negative length": "no valid Content-Length",
                "asks an over-long question": "the question is too long (25,000 characters; at most 20,000)",
                "asks past the model's context": "over the model's context of 256"}
    for name, message in expected.items():
        body = BAD_CLIENTS[name][0](server.server_address[:2]).split(b"\r\n\r\n", 1)[1].decode()
        assert message in body and "\n" not in body, (name, body)


def test_a_connection_the_stopping_server_closed_under_its_handler_is_one_line(server, capfd):
    """A signal caught between accepting a connection and starting its handler makes socketserver close the socket
    while the handler runs (``python -m bench.serve_signals`` met it once in 30 rounds: the handler's
    ``settimeout`` raised EBADF and its traceback was printed before the stop's one line): one log line, no
    traceback."""
    try:
        raise OSError(errno.EBADF, "Bad file descriptor")
    except OSError:
        server.handle_error(None, ("127.0.0.1", 5))
    assert capfd.readouterr().err == "127.0.0.1 - - the connection was closed as the server stopped\n"


def held_after(address: Address, seconds: float) -> bool:
    """Whether a client that sent only its headers is still waiting, unanswered, after ``seconds``."""
    client = socket.create_connection(address, timeout=seconds)
    client.sendall(head(100))
    try:
        client.recv(1)  # the 408 answer, or the close
        return False
    except TimeoutError:
        return True
    finally:
        client.close()


def test_the_read_timeout_is_the_servers(server):
    """``build_server(timeout=...)`` sets how long a silent client is waited for: a 0.5 s server lets it go within
    1.5 s, while a 5 s server still holds it then."""
    for seconds, held in ((0.5, False), (5.0, True)):
        demo = build_server(server.predictor, port=0, timeout=seconds)
        threading.Thread(target=demo.serve_forever, daemon=True).start()
        try:
            assert held_after(demo.server_address[:2], 1.5) == held, seconds
        finally:
            demo.shutdown()
            demo.server_close()


def request_lines(stream, count: int) -> list[str]:
    """Lines of ``stream`` up to and including the ``count``-th that logs a request."""
    lines: list[str] = []
    while sum("POST /predict" in line for line in lines) < count:
        lines.append(stream.readline())
        assert lines[-1], "".join(lines)
    return lines


def test_serve_in_a_real_process_shrugs_off_bad_clients(files, tmp_path):
    """``python -m mm_adapter serve --timeout 0.5``: a client that stalls is answered 408 within seconds, one that
    leaves mid-upload and one with an over-long question are handled; good requests are answered after each; stderr
    has no traceback and one line per request; Ctrl-C stops it."""
    command = [sys.executable, "-m", "mm_adapter", "serve", "--base", str(files.base), "--adapter",
               str(files.visual), "--port", "0", "--device", "cpu", "--timeout", str(TIMEOUT)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**ENV, "PYTHONUNBUFFERED": "1"}, cwd=tmp_path, preexec_fn=default_ctrl_c)
    try:
        found = re.match(r"demo at http://127\.0\.0\.1:(\d+)/ \(", process.stdout.readline())
        assert found, process.stderr.read() if process.poll() is not None else "no address line"
        address = ("127.0.0.1", int(found.group(1)))
        url = f"http://127.0.0.1:{found.group(1)}/"
        started = time.monotonic()
        assert status(sends_then_waits(address, cut(upload()))) == 408
        assert time.monotonic() - started < 5  # --timeout 0.5 reached the server (its default is 60 s)
        sends_then_leaves(address, cut(upload()))
        assert status(sends_then_waits(address, upload("Why? " * 5000))) == 400
        for _ in range(2):
            assert ask(url, ("red.png", png("red")))[0] == 200
        logged = finishes(lambda: request_lines(process.stderr, 5))  # a line is written once its answer is out
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 130
        err = "".join(logged) + process.stderr.read()
        assert "Traceback" not in err and err.count("POST /predict") == 5, err
        assert err.splitlines()[-1] == "interrupted", err
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_serve_refuses_a_timeout_that_is_not_positive(capfd):
    """``--timeout 0`` (a server that never waits) is one line and exit 2."""
    from mm_adapter.cli import main

    capfd.readouterr()
    assert main(["serve", "--timeout", "0"]) == 2
    err = capfd.readouterr().err
    assert err.startswith("error: ") and "--timeout: must be > 0" in err and err.count("\n") == 1, err
