"""Older spelling of ``mm-adapter serve`` (same flags), kept so documented commands keep working."""

import sys

from mm_adapter.cli import main

sys.exit(main(["serve", *sys.argv[1:]]))
