"""Older spelling of ``mm-adapter generate`` (same flags), kept so documented commands keep working."""

import sys

from mm_adapter.cli import main

sys.exit(main(["generate", *sys.argv[1:]]))
