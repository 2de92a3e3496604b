"""Older spelling of ``mm-adapter main`` (same flags), kept so documented commands keep working."""

import sys

from mm_adapter.cli import main

sys.exit(main(["main", *sys.argv[1:]]))
