"""Shared fixtures: the real benchmark data at ../shared/data (never copied in; tests skip without it) and a
temporary Arrow cache for Alpaca reads."""

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or skip: the real ScienceQA files are not distributed with the repository."""
    if not (SHARED_DATA / "scienceqa" / "problems.json").is_file():
        pytest.skip(f"real ScienceQA data not found at {SHARED_DATA} (expected ../shared/data next to the repo)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def alpaca_cache_in_tmp(tmp_path_factory, monkeypatch):
    """datasets' Arrow cache of Alpaca reads goes to this session's tmp folder, not the user's cache (a test that
    sets MM_ADAPTER_CACHE itself keeps it)."""
    import mm_adapter.data.alpaca

    folder = tmp_path_factory.getbasetemp() / "alpaca-cache"
    monkeypatch.setattr(mm_adapter.data.alpaca, "cache_root",
                        lambda: Path(os.environ["MM_ADAPTER_CACHE"]) if "MM_ADAPTER_CACHE" in os.environ else folder)
