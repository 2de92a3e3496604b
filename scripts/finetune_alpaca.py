"""Older spelling of ``mm-adapter train alpaca`` (same flags), kept so documented commands keep working."""

import sys

from mm_adapter.cli import main

sys.exit(main(["train", "alpaca", *sys.argv[1:]]))
