"""The demo as a local web page: upload an image, type a question and options, see the answer with probabilities.

    mm-adapter serve --adapter runs/sqa_mm/best.safetensors      # then open http://127.0.0.1:8000/

Standard library only (``http.server`` and a self-contained page with inline CSS and JS): nothing is
fetched from anywhere else, so the page loads fully offline. The model is loaded once at start and
answers one request at a time (the predictor's lock). A bad upload (not an image, truncated, too
large, empty, missing fields) gets a one-line message on the page; the server keeps serving.
"""

from __future__ import annotations

import email.policy
import html
import json
import traceback
from dataclasses import dataclass
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import MMAdapterError
from .predictor import MAX_IMAGE_BYTES, Predictor

PAGE = Path(__file__).with_name("page.html")
MAX_BODY = MAX_IMAGE_BYTES + 2**20  # the image plus room for the text fields
DRAIN_LIMIT = 256 * 2**20  # a larger body is not read at all: the connection is closed after the answer


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

    filename, data = fields.get("image", (None, b""))
    image = data if (filename or data) else None  # a file input left empty sends no name and no bytes
    return DemoRequest(text("question"), parse_choices(text("choices")), text("context"), image,
                       filename or "uploaded image")


class DemoHandler(BaseHTTPRequestHandler):
    """GET / is the page; POST /predict takes the form and answers JSON (``error`` on bad input)."""

    server: "DemoServer"
    server_version = "mm-adapter-demo"
    timeout = 60  # a client that stops sending mid-upload frees its thread

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
                                                       request.context, image_name=request.image_name)
        except MMAdapterError as error:
            self._send_json(getattr(error, "status", 400), {"error": str(error).strip().splitlines()[0]})
        except Exception as error:  # a bug must not take the page down: log it, answer one line
            traceback.print_exc()
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
            raise BadRequest(f"upload too large ({size / 2**20:.1f} MiB; the image limit is "
                             f"{MAX_IMAGE_BYTES / 2**20:.0f} MiB)", 413)
        body = self.rfile.read(size)
        if len(body) < size:
            raise BadRequest("the upload was cut off before its end")
        return body

    def _discard(self, size: int) -> None:
        """Read an over-limit body so the browser gets our message instead of a reset connection."""
        if size > DRAIN_LIMIT:
            self.close_connection = True
            return
        while size > 0:
            chunk = self.rfile.read(min(size, 2**20))
            if not chunk:
                break
            size -= len(chunk)

    def _send_json(self, status: int, payload: dict) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)


class DemoServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], predictor: Predictor):
        super().__init__(address, DemoHandler)
        self.predictor = predictor
        self.page = PAGE.read_text(encoding="utf-8").replace("{{MODEL}}", html.escape(predictor.describe()))

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"


def build_server(predictor: Predictor, host: str = "127.0.0.1", port: int = 8000) -> DemoServer:
    """Listen on ``host:port`` with a loaded predictor; a busy port is one line."""
    try:
        return DemoServer((host, port), predictor)
    except OSError as error:
        raise MMAdapterError(f"cannot listen on {host}:{port} ({error.strerror or error})") from None
