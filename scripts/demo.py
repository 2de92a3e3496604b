"""Older spelling of ``mm-adapter demo`` (same flags), kept so documented commands keep working."""

import sys

from mm_adapter.cli import main

sys.exit(main(["demo", *sys.argv[1:]]))
