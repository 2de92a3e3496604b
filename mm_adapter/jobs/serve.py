"""Serve the demo as a local web page (``mm-adapter serve``); runs until interrupted."""

from __future__ import annotations

from mm_adapter.demo.server import build_server
from mm_adapter.jobs.configs.answering import ServeConfig
from mm_adapter.jobs.demo import load_predictor


def serve(config: ServeConfig) -> None:
    """Load the model once, then answer requests at http://HOST:PORT/ until Ctrl-C."""
    server = build_server(load_predictor(config), config.host, config.port, config.timeout)
    print(f"demo at {server.url} ({server.predictor.describe()}); Ctrl-C stops it", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
