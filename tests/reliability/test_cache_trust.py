"""Finding 4 of issue 20 (deliverable 3): a parsed-CSV cache entry is checked on load like the CSV itself, and
temporary files left by interrupted cache writes are removed."""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks.data.csvcache import CACHE_FORMAT, STALE_TMP_S, load_csv


def poisoned(parsed_dates: np.ndarray, values: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    dates, values = parsed_dates.copy(), values.copy()
    if kind == "nan":
        values[5, 0] = np.nan
    elif kind == "inf":
        values[7, 1] = np.inf
    else:
        dates[10], dates[11] = dates[11], dates[10]
    return dates, values


@pytest.mark.parametrize("kind", ["nan", "inf", "backwards dates"])
def test_a_poisoned_cache_entry_is_not_trusted(kind, shared_data_dir: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("MIXBENCH_CACHE_DIR", str(tmp_path))
    csv = shared_data_dir / "ETT-small" / "ETTh1.csv"
    sha256 = hashlib.sha256(csv.read_bytes()).hexdigest()
    clean = load_csv(csv, sha256)
    dates, values = poisoned(clean.dates, clean.values, kind)
    entry = tmp_path / "csv" / f"{sha256}-v{CACHE_FORMAT}.npz"
    with open(entry, "wb") as handle:
        np.savez(handle, columns=np.array(clean.columns, dtype=str), dates=dates.astype(np.int64), values=values)

    reloaded = load_csv(csv, sha256)
    assert np.isfinite(reloaded.values).all()
    assert (np.diff(reloaded.dates.astype(np.int64)) >= 0).all()
    np.testing.assert_array_equal(reloaded.values, clean.values)


def test_temporary_files_of_interrupted_writes_are_removed(shared_data_dir: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("MIXBENCH_CACHE_DIR", str(tmp_path))
    folder = tmp_path / "csv"
    folder.mkdir()
    old = folder / ".abc-v1.npz.x1y2.tmp"
    fresh = folder / ".abc-v1.npz.z3w4.tmp"
    for path in (old, fresh):
        path.write_bytes(b"half an entry")
    hours_ago = time.time() - STALE_TMP_S - 60
    os.utime(old, (hours_ago, hours_ago))
    csv = shared_data_dir / "ETT-small" / "ETTh1.csv"
    load_csv(csv, hashlib.sha256(csv.read_bytes()).hexdigest())
    assert not old.exists()
    assert fresh.exists()  # maybe a write still in progress in another process
