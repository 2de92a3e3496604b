"""The demo as a local web page: upload an image or a video clip and/or a sound (a file, or recorded from the
microphone on the page), type a question and options, see the answer with probabilities.

    mm-adapter serve --adapter runs/sqa_mm/best.safetensors      # then open http://127.0.0.1:8000/

Standard library only (``http.server`` and a self-contained page with inline CSS and JS): nothing is
fetched from anywhere else, so the page loads fully offline. The model is loaded once at start and
answers one request at a time (the predictor's lock). A bad upload (not an image, truncated, too
large, empty, a clip that is not a video, has no frames, fewer than the adapter's frames or too many, a
sound that is not audio, truncated, empty, over 20 MiB or 30 s, missing fields, a question too long for
the model) gets a one-line message on the page; the server keeps serving. A recording is whatever
container the browser's MediaRecorder writes (Chromium: WebM/Opus; Firefox: Ogg/Opus): the server tells it
by its bytes and decodes it through the same PyAV path and bounds as any sound file.

Bounded and quiet: a body over ``MAX_BODY`` is refused (413) without being kept; a client silent
for ``timeout`` seconds (while sending its request or its body) is answered 408 or dropped; a body
shorter than its Content-Length is answered 400. Each request is logged in one line once its
answer is sent; a client that disconnected or stalled is one line too, never a traceback.
"""

from __future__ import annotations

import email.policy
import errno
import html
import json
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from mm_adapter.demo.predictor import Predictor
from mm_adapter.encoders.audio.decode import MAX_AUDIO_BYTES, MAX_AUDIO_SECONDS
from mm_adapter.encoders.feature_cache import MAX_IMAGE_BYTES
from mm_adapter.errors import MMAdapterError

PAGE = Path(__file__).with_name("page.html")
MAX_BODY = MAX_IMAGE_BYTES + MAX_AUDIO_BYTES + 2**20  # an image or clip, a sound, and room for the text fields
DRAIN_LIMIT = 256 * 2**20  # a larger body is not read at all: the connection is closed after the answer
DEFAULT_TIMEOUT = 60.0  # seconds a client may stay silent while sending its request
CLIENT_GONE = (ConnectionError, TimeoutError)  # reset, broken pipe, aborted, stalled: the client, not a bug


class BadRequest(MMAdapterError):
    """A request the page should explain in one line, with its HTTP status."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class DemoRequest:
    question: str
    choices: list[str]
    context: str
    image: bytes | None  # None: no file chosen
    image_name: str
    audio: bytes | None = None  # None: no sound chosen or recorded
    audio_name: str = "uploaded sound"


def parse_choices(text: str) -> list[str]:
    """One option per line, or comma-separated on a single line; blank entries are dropped."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) == 1:
        lines = lines[0].split(",")
    return [item.strip() for item in lines if item.strip()]


def parse_form(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """multipart/form-data -> {field name: (file name or None, raw bytes)}, parsed by the ``email`` package."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise BadRequest(f"expected a multipart/form-data upload, got {content_type or 'no content type'!r}")
    header = b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n"
    message = BytesParser(policy=email.policy.HTTP).parsebytes(header + body)
    if not message.is_multipart() or message.defects:
        raise BadRequest("the upload is not a well-formed multipart form")
    fields = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            fields[str(name)] = (part.get_filename(), part.get_payload(decode=True) or b"")
    return fields


def read_request(content_type: str, body: bytes) -> DemoRequest:
    """The form's fields, or one line naming what is missing (the predictor checks the values)."""
    fields = parse_form(content_type, body)
    missing = [name for name in ("question", "choices") if name not in fields]
    if missing:
        raise BadRequest(f"the form is missing the field(s): {', '.join(missing)}")

    def text(name: str) -> str:
        return fields.get(name, (None, b""))[1].decode("utf-8", "replace")

    def upload(name: str, default: str) -> tuple[bytes | None, str]:
        filename, data = fields.get(name, (None, b""))
        return (data if (filename or data) else None), filename or default  # an empty file input sends neither

    image, image_name = upload("image", "uploaded image")
    audio, audio_name = upload("audio", "uploaded sound")
    return DemoRequest(text("question"), parse_choices(text("choices")), text("context"), image, image_name,
                       audio, audio_name)


class DemoHandler(BaseHTTPRequestHandler):
    """GET / is the page; POST /predict takes the form and answers JSON (``error`` on bad input)."""

    server: "DemoServer"
    server_version = "mm-adapter-demo"
    timeout = DEFAULT_TIMEOUT  # a client that stops sending mid-upload frees its thread (the server's overrides)

    def setup(self) -> None:
        self.timeout = self.server.request_timeout  # read by StreamRequestHandler.setup for the socket
        super().setup()

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path in ("/", "/index.html"):
            self._send(200, self.server.page.encode(), "text/html; charset=utf-8")
        elif path == "/health":
            self._send_json(200, {"model": self.server.predictor.describe()})
        else:
            self._send_json(404, {"error": f"no such page: {path}"})

    def do_POST(self) -> None:
        if urlsplit(self.path).path != "/predict":
            self._send_json(404, {"error": "POST to /predict"})
            return
        try:
            request = read_request(self.headers.get("Content-Type", ""), self._read_body())
            prediction = self.server.predictor.predict(request.image, request.question, request.choices,
                                                       request.context, image_name=request.image_name,
                                                       audio=request.audio, audio_name=request.audio_name)
        except MMAdapterError as error:
            self._send_json(getattr(error, "status", 400), {"error": str(error).strip().splitlines()[0]})
        except Exception as error:  # a bug must not take the page down: log it, answer one line
            self.server.log_line(traceback.print_exc)
            self._send_json(500, {"error": f"internal error ({type(error).__name__}); see the server log"})
        else:
            self._send_json(200, prediction.to_dict())

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None or not length.strip().isdigit():
            raise BadRequest("the request has no valid Content-Length", 411)
        size = int(length)
        if size > MAX_BODY:
            self._discard(size)
            raise BadRequest(f"upload too large ({size / 2**20:.1f} MiB; at most {MAX_BODY / 2**20:.0f} MiB: an "
                             f"image or clip of {MAX_IMAGE_BYTES / 2**20:.0f} MiB, a sound of "
                             f"{MAX_AUDIO_BYTES / 2**20:.0f} MiB and the text)", 413)
        return self._receive(size)

    def _receive(self, size: int) -> bytes:
        """``size`` bytes of the body; a body cut short or a client silent past the timeout is a BadRequest
        (the connection is closed after the answer, as its framing is lost)."""
        try:
            body = self.rfile.read(size)
        except CLIENT_GONE as error:
            self.close_connection = True
            raise BadRequest(f"the upload stalled or broke off ({type(error).__name__}; the server waits "
                             f"{self.timeout:g} s for data)", 408) from None
        if len(body) < size:
            self.close_connection = True
            raise BadRequest(f"the upload was cut off before its end ({len(body):,} of {size:,} bytes)")
        return body

    def _discard(self, size: int) -> None:
        """Read an over-limit body so the browser gets our message instead of a reset connection."""
        if size > DRAIN_LIMIT:
            self.close_connection = True
            return
        try:
            while size > 0:
                size -= len(self._receive(min(size, 2**20)))
        except BadRequest:  # it stalled or stopped sending: answer "too large" all the same
            return

    def _send_json(self, status: int, payload: dict) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        """Answer, then log the request in one line; a client already gone is that one line instead."""
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)
        except CLIENT_GONE as error:
            self.close_connection = True
            self.log_message('"%s" %s not sent: the client went away (%s)', self.requestline, status,
                             type(error).__name__)
        else:
            super().log_request(status, len(body))

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        self.server.log_line(lambda: super(DemoHandler, self).log_message(format, *args))

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Not at ``send_response``: ``_send`` logs once the answer is out (one line per request, sent or not)."""


class DemoServer(ThreadingHTTPServer):
    """Handler threads are daemons (a stalled client must not keep the process alive), so stopping is ordered:
    stop accepting, stop every handler's output (the log lock), wait up to ``CLOSE_GRACE`` seconds for handlers to
    finish; any still inside a request (a long prediction) is abandoned, and the command line leaves the process
    with ``os._exit`` so no daemon thread is inside a write or a computation while the interpreter shuts down
    (which aborted it with SIGABRT instead of exit 130/143)."""

    daemon_threads = True
    block_on_close = False  # ThreadingMixIn's own join would wait forever on a stalled client
    CLOSE_GRACE = 2.0

    def __init__(self, address: tuple[str, int], predictor: Predictor, timeout: float = DEFAULT_TIMEOUT):
        self.log_lock = threading.Lock()  # handler threads are daemons: none may be mid-write on stderr at exit
        self.closing = False  # set first: a port that cannot be bound calls server_close inside __init__
        self.handlers: set[threading.Thread] = set()
        self.handlers_lock = threading.Lock()
        super().__init__(address, DemoHandler)
        self.predictor = predictor
        self.request_timeout = timeout
        self.page = (PAGE.read_text(encoding="utf-8").replace("{{MODEL}}", html.escape(predictor.describe()))
                     .replace("{{MAX_AUDIO_SECONDS}}", f"{MAX_AUDIO_SECONDS:g}"))

    def log_line(self, write) -> None:
        """Run ``write`` (a handler's one log line) unless the server is closing."""
        with self.log_lock:
            if not self.closing:
                write()

    def process_request_thread(self, request, client_address) -> None:
        with self.handlers_lock:
            self.handlers.add(threading.current_thread())
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.handlers_lock:
                self.handlers.discard(threading.current_thread())

    def server_close(self) -> None:
        """Stop accepting and stop handler threads logging, then give running handlers ``CLOSE_GRACE`` seconds to
        finish: a daemon thread inside a stderr write when the interpreter exits aborts it (SIGABRT) instead of
        letting Ctrl-C end with its one line."""
        deadline = time.monotonic() + self.CLOSE_GRACE
        locked = self.log_lock.acquire(timeout=self.CLOSE_GRACE)  # a handler blocked writing to a full stderr pipe
        self.closing = True                                        # must not hold the close for ever
        if locked:
            self.log_lock.release()
        super().server_close()
        for thread in self.running_handlers():
            thread.join(max(0.0, deadline - time.monotonic()))

    def running_handlers(self) -> list[threading.Thread]:
        """Handler threads still inside a request (after :meth:`server_close`: the abandoned ones)."""
        with self.handlers_lock:
            return [thread for thread in self.handlers if thread.is_alive()]

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def handle_error(self, request, client_address) -> None:
        """A client that reset, closed or stalled is one line, and so is a connection the stopping server closed
        under its handler (a signal caught between accepting and starting the handler: socketserver then closes the
        socket, EBADF); anything else is a bug and keeps its traceback."""
        error = sys.exc_info()[1]
        if isinstance(error, OSError) and error.errno == errno.EBADF:
            self.log_line(lambda: print(f"{client_address[0]} - - the connection was closed as the server stopped",
                                        file=sys.stderr, flush=True))
            return
        if not isinstance(error, CLIENT_GONE):
            self.log_line(lambda: super(DemoServer, self).handle_error(request, client_address))
            return
        self.log_line(lambda: print(f"{client_address[0]} - - the client went away ({type(error).__name__}: {error})",
                                    file=sys.stderr, flush=True))


def build_server(predictor: Predictor, host: str = "127.0.0.1", port: int = 8000,
                 timeout: float = DEFAULT_TIMEOUT) -> DemoServer:
    """Listen on ``host:port`` with a loaded predictor; a busy port is one line. ``timeout``: seconds a client
    may stay silent while sending its request before it is answered 408 or dropped."""
    try:
        return DemoServer((host, port), predictor, timeout)
    except OSError as error:
        raise MMAdapterError(f"cannot listen on {host}:{port} ({error.strerror or error})") from None
