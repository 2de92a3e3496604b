"""Older spelling of ``mm-adapter convert`` (same flags), kept so documented commands keep working."""

import sys

from mm_adapter.cli import main

sys.exit(main(["convert", *sys.argv[1:]]))
