"""``python -m bench.methods``: the comparison, its flags in ``bench/methods/cli.py``."""

import sys

from bench.methods.cli import main

if __name__ == "__main__":
    sys.exit(main())
