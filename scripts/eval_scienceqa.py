"""Older spelling of ``mm-adapter eval scienceqa`` (same flags), kept so documented commands keep working."""

import sys

from mm_adapter.cli import main

sys.exit(main(["eval", "scienceqa", *sys.argv[1:]]))
