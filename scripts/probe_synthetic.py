"""Older spelling of ``python -m bench.probe_synthetic`` (a benchmark, moved to bench/), kept so documented commands keep working."""

import runpy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: bench/ is not installed
runpy.run_module("bench.probe_synthetic", run_name="__main__", alter_sys=True)
