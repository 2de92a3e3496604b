"""Older spelling of ``mm-adapter train scienceqa`` (same flags), kept so documented commands keep working."""

import sys

from mm_adapter.cli import main

sys.exit(main(["train", "scienceqa", *sys.argv[1:]]))
