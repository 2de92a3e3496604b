"""``python -m mm_adapter ...`` is the ``mm-adapter`` command."""

import sys

from mm_adapter.cli import main

sys.exit(main())
