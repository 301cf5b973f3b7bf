"""Shared test fixtures: the real benchmark data beside the repository and a private working directory."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MIXBENCH_DATA_DIR", REPO_ROOT.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The unchanged Time-Series-Library datasets in ../shared/data (never copied into the repo)."""
    if not (SHARED_DATA / "ETT-small" / "ETTh1.csv").is_file():
        pytest.fail(f"benchmark data not found under {SHARED_DATA}; set MIXBENCH_DATA_DIR to the shared data folder")
    return SHARED_DATA
