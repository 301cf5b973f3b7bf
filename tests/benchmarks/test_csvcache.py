"""Parsing TSLib CSVs (every kind of bad content) and the atomic, self-healing parsed-CSV cache."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks.data.csvcache import CACHE_FORMAT, cache_dir, load_csv, parse_csv
from benchmarks.errors import DataError


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("MIXBENCH_CACHE_DIR", str(folder))
    return folder


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode())
    return path


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


GOOD = "date,a,OT\n2020-01-01 00:00:00,1.5,10\n2020-01-01 01:00:00,2.5,11\n2020-01-01 02:00:00,3.5,12\n"


def test_parses_dates_columns_and_values(tmp_path):
    parsed = parse_csv(write(tmp_path / "good.csv", GOOD))
    assert parsed.columns == ("a", "OT")
    assert parsed.dates.dtype == np.dtype("datetime64[ns]")
    assert parsed.dates[1] == np.datetime64("2020-01-01T01:00:00")
    np.testing.assert_array_equal(parsed.values, [[1.5, 10], [2.5, 11], [3.5, 12]])
    assert parsed.values.dtype == np.float64


def test_weather_keeps_crlf_free_names_with_replacement_characters(shared_data_dir):
    parsed = parse_csv(shared_data_dir / "weather" / "weather.csv")
    assert parsed.values.shape == (52_696, 21)
    assert parsed.columns[-1] == "OT"  # no stray '\r' from the CRLF line ends
    odd = [name for name in parsed.columns if "\ufffd" in name]
    assert odd == ["SWDR (W/m\ufffd)", "PAR (\ufffdmol/m\ufffd/s)", "max. PAR (\ufffdmol/m\ufffd/s)"]
    reference = pd.read_csv(shared_data_dir / "weather" / "weather.csv")
    assert list(parsed.columns) == list(reference.columns[1:])
    np.testing.assert_allclose(parsed.values, reference.iloc[:, 1:].to_numpy(), rtol=1e-15, atol=0)


def test_non_iso_dates_are_parsed(tmp_path):
    # exchange_rate.csv writes dates as 1990/1/1 0:00
    parsed = parse_csv(write(tmp_path / "x.csv", "date,OT\n1990/1/1 0:00,0.7\n1990/1/2 0:00,0.8\n"))
    assert parsed.dates[1] == np.datetime64("1990-01-02")


def test_a_repeated_timestamp_is_kept(tmp_path):
    content = "date,OT\n2020-01-01 00:00,1\n2020-01-01 00:00,1\n2020-01-01 01:00,2\n"
    parsed = parse_csv(write(tmp_path / "x.csv", content))
    assert parsed.n_rows == 3


@pytest.mark.parametrize("content, fragments", [
    ("", ["not a readable CSV", "Empty"]),
    ("date,a,OT\n2020-01-01,1,2\n2020-01-02,1\n", ["malformed at line 3", "expected 3 fields, found 2"]),
    ("time,a,OT\n2020-01-01,1,2\n", ["no 'date' column", "'time'"]),
    ("date\n2020-01-01\n", ["only a 'date' column"]),
    ("date,a,OT\n", ["no data rows"]),
    ("date,a,a\n2020-01-01,1,2\n", ["column 'a' more than once"]),
    ("date,a,OT\n2020-01-01,1,2\n2020-01-02,x,3\n", ["column 'a'", "not numeric", "'x'", "row 2 (line 3)"]),
    ("date,a,OT\n2020-01-01,1,2\n2020-01-02,2,NaN\n", ["column 'OT'", "missing or NaN", "row 2 (line 3)"]),
    ("date,a,OT\n2020-01-01,1,2\n2020-01-02,,3\n", ["column 'a'", "missing or NaN", "row 2 (line 3)"]),
    ("date,a,OT\n2020-01-01,1,2\n2020-01-02,2,3\n2020-01-03,-inf,3\n", ["column 'a'", "infinite", "row 3 (line 4)"]),
    ("date,a,OT\n2020-01-02,1,2\n2020-01-03,2,3\n2020-01-01,3,4\n", ["go back in time at row 3 (line 4)",
                                                                     "2020-01-01T00:00:00 follows 2020-01-03",
                                                                     "sort the file by date"]),
    ("date,a,OT\n2020-01-01,1,2\nyesterday,2,3\n", ["'yesterday'", "row 2 (line 3)", "not a date"]),
    ("date,a,OT\n2020-01-01,1,2\n,2,3\n", ["no date at row 2 (line 3)"]),
    ("date,a,OT\n1,1,2\n2,2,3\n", ["holds int64 values, not timestamps"]),
])
def test_bad_content_is_one_line_data_error_naming_the_file(tmp_path, content, fragments):
    path = write(tmp_path / "bad.csv", content)
    with pytest.raises(DataError) as error:
        parse_csv(path)
    message = str(error.value)
    assert "\n" not in message
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message


def test_load_writes_one_cache_entry_named_by_sha256_and_reuses_it(tmp_path, private_cache):
    path = write(tmp_path / "good.csv", GOOD)
    sha256 = sha256_of(path)
    first = load_csv(path, sha256)
    assert [entry.name for entry in (private_cache / "csv").iterdir()] == [f"{sha256}-v{CACHE_FORMAT}.npz"]
    # the cache is keyed by content: once written, the CSV itself is not read again for that sha256
    path.write_text("not,a,csv\n")
    second = load_csv(path, sha256)
    assert second.columns == first.columns
    np.testing.assert_array_equal(second.values, first.values)
    np.testing.assert_array_equal(second.dates, first.dates)


def test_another_date_column_parses_like_date_and_is_its_own_cache_entry(tmp_path, private_cache):
    # the timestamps last, under another name: the parse is the one of the TSLib layout
    path = write(tmp_path / "stamped.csv", "a,OT,stamp\n1.5,10,2020-01-01 00:00:00\n2.5,11,2020-01-01 01:00:00\n")
    sha256 = sha256_of(path)
    parsed = load_csv(path, sha256, "stamp")
    reference = parse_csv(write(tmp_path / "tslib.csv", "date,a,OT\n2020-01-01 00:00:00,1.5,10\n"
                                                         "2020-01-01 01:00:00,2.5,11\n"))
    assert parsed.columns == reference.columns == ("a", "OT")
    np.testing.assert_array_equal(parsed.dates, reference.dates)
    np.testing.assert_array_equal(parsed.values, reference.values)
    assert [entry.name for entry in (private_cache / "csv").iterdir()] != [f"{sha256}-v{CACHE_FORMAT}.npz"]
    # the cached parse under `stamp` is never handed out for another date column
    with pytest.raises(DataError, match="has no 'date' column"):
        load_csv(path, sha256)
    with pytest.raises(DataError, match="'when' is not a column of") as error:
        load_csv(path, sha256, "when")
    assert error.value.setting == "date_column" and "date_column 'when'" in str(error.value)
    assert load_csv(path, sha256, "stamp").columns == ("a", "OT")


@pytest.mark.parametrize("damage", [b"garbage, not an npz archive", b"PK\x03\x04truncated"])
def test_corrupt_cache_entry_is_rebuilt(tmp_path, private_cache, damage):
    path = write(tmp_path / "good.csv", GOOD)
    sha256 = sha256_of(path)
    load_csv(path, sha256)
    entry = private_cache / "csv" / f"{sha256}-v{CACHE_FORMAT}.npz"
    entry.write_bytes(damage)
    parsed = load_csv(path, sha256)
    np.testing.assert_array_equal(parsed.values, [[1.5, 10], [2.5, 11], [3.5, 12]])
    assert entry.read_bytes() != damage
    assert load_csv(path, sha256).columns == ("a", "OT")


def test_failing_cache_write_leaves_no_file_and_still_loads(tmp_path, private_cache):
    path = write(tmp_path / "good.csv", GOOD)
    sha256 = sha256_of(path)
    # a folder where the entry should go makes the final rename fail after the temporary file was written
    blocker = private_cache / "csv" / f"{sha256}-v{CACHE_FORMAT}.npz"
    blocker.mkdir(parents=True)
    with pytest.warns(UserWarning, match="could not write the parsed-CSV cache"):
        parsed = load_csv(path, sha256)
    assert parsed.columns == ("a", "OT")
    assert [entry.name for entry in (private_cache / "csv").iterdir()] == [blocker.name]
    assert not any(blocker.iterdir())


def test_bad_csv_is_never_cached(tmp_path, private_cache):
    path = write(tmp_path / "bad.csv", "date,a\n2020-01-01,nan\n")
    with pytest.raises(DataError):
        load_csv(path, sha256_of(path))
    assert not (private_cache / "csv").exists() or not any((private_cache / "csv").iterdir())


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MIXBENCH_CACHE_DIR", str(tmp_path / "here"))
    assert cache_dir() == tmp_path / "here"
    monkeypatch.delenv("MIXBENCH_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "mixbench"
