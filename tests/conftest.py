"""Locates the real benchmark data, kept outside the repository at ../shared/data (never copied in)."""

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or skip: the real ScienceQA files are not distributed with the repository."""
    if not (SHARED_DATA / "scienceqa" / "problems.json").is_file():
        pytest.skip(f"real ScienceQA data not found at {SHARED_DATA} (expected ../shared/data next to the repo)")
    return SHARED_DATA
