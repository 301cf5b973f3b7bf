"""Parsing and validating a Time-Series-Library CSV, and the on-disk cache of parsed files keyed by their sha256 and
date column.

The cache lives in $MIXBENCH_CACHE_DIR, else $XDG_CACHE_HOME/mixbench, else ~/.cache/mixbench: never in the data
dir, which may be read-only or shared. Every write goes to a temporary file that replaces the target atomically;
an entry is checked again on load (shape, finite values, dates in order) like the CSV it came from.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from benchmarks.data.registry import DEFAULT_DATE_COLUMN
from benchmarks.errors import DataError

# Bump when the cached layout or the validation rules change, so that old entries are ignored.
CACHE_FORMAT = 1
# A temporary file older than this is left from an interrupted write (a live write takes well under a minute).
STALE_TMP_S = 3600.0
_MAX_LISTED_COLUMNS = 8


@dataclass(frozen=True, eq=False)
class ParsedCSV:
    """A validated CSV: non-decreasing dates and finite float64 values, columns as named in the file; the same
    whichever column the dates came from."""

    columns: tuple[str, ...]   # value columns in file order, without the date column
    dates: np.ndarray          # (rows,) datetime64[ns]
    values: np.ndarray         # (rows, C) float64

    @property
    def n_rows(self) -> int:
        return int(self.values.shape[0])


def cache_dir() -> Path:
    """The mixbench cache folder (created on first write)."""
    if os.environ.get("MIXBENCH_CACHE_DIR"):
        return Path(os.environ["MIXBENCH_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "mixbench"


def write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call `write(binary_file)` on a temporary file beside `path`, then move it onto `path`; never a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_csv(path: Path, sha256: str, date_column: str = DEFAULT_DATE_COLUMN) -> ParsedCSV:
    """The parsed, validated contents of `path`, whose sha256 is `sha256`, with its timestamps in `date_column`, from
    the cache when it holds them.

    A missing or unreadable cache entry is rebuilt; a cache that cannot be written only costs a warning.
    """
    entry = cache_entry(sha256, date_column)
    _remove_stale_tmp(entry.parent)
    cached = _read_entry(entry)
    if cached is not None:
        return cached
    parsed = parse_csv(path, date_column)
    try:
        write_atomically(entry, lambda handle: np.savez(
            handle, columns=np.array(parsed.columns, dtype=str), dates=parsed.dates.astype(np.int64),
            values=parsed.values))
    except OSError as error:
        warnings.warn(f"could not write the parsed-CSV cache {entry}: {error}; set MIXBENCH_CACHE_DIR to a "
                      "writable folder to make reloads fast", stacklevel=2)
    return parsed


def cache_entry(sha256: str, date_column: str = DEFAULT_DATE_COLUMN) -> Path:
    """The cache file of a CSV's parse with its dates in `date_column`.

    The same file parsed with another date column has other columns and dates, so the column is part of the key; under
    TSLib's `date` the entry keeps the name it had before the column could be chosen, so existing caches stay valid.
    """
    key = sha256 if date_column == DEFAULT_DATE_COLUMN else \
        f"{sha256}-{hashlib.sha256(date_column.encode()).hexdigest()[:16]}"  # any column name makes a safe file name
    return cache_dir() / "csv" / f"{key}-v{CACHE_FORMAT}.npz"


def _read_entry(entry: Path) -> ParsedCSV | None:
    if not entry.is_file():
        return None
    try:
        with np.load(entry, allow_pickle=False) as archive:
            columns = tuple(str(name) for name in archive["columns"])
            dates = archive["dates"].astype("datetime64[ns]")
            values = archive["values"]
    except Exception:  # any damage (truncation, garbage, a foreign file) means: parse the CSV again
        return None
    if values.dtype != np.float64 or values.shape != (len(dates), len(columns)) or not columns or not len(dates):
        return None
    # The same checks as a freshly parsed CSV: a damaged or planted entry is parsed again, never trusted.
    if not np.isfinite(values).all() or (np.diff(dates.astype(np.int64)) < 0).any() or np.isnat(dates).any():
        return None
    return ParsedCSV(columns=columns, dates=dates, values=values)


def _remove_stale_tmp(folder: Path) -> None:
    """Delete temporary files that interrupted writes (a killed process) left behind."""
    if not folder.is_dir():
        return
    now = time.time()
    for leftover in folder.glob(".*.tmp"):
        try:
            if now - leftover.stat().st_mtime > STALE_TMP_S:
                leftover.unlink()
        except OSError:  # removed by another process meanwhile, or not ours to remove
            continue


def parse_csv(path: Path, date_column: str = DEFAULT_DATE_COLUMN) -> ParsedCSV:
    """Parse a TSLib CSV (a `date` column, or `date_column`, plus numeric columns) with pyarrow; bad content raises
    DataError."""
    invalid_rows: list = []

    def remember_invalid_row(row) -> str:
        invalid_rows.append(row)
        return "skip"

    try:
        table = pacsv.read_csv(
            path,
            # single-threaded so that pyarrow reports the line number of a malformed row
            read_options=pacsv.ReadOptions(use_threads=False),
            parse_options=pacsv.ParseOptions(invalid_row_handler=remember_invalid_row),
        )
    except pa.ArrowInvalid as error:
        reason = str(error).splitlines()[0]
        raise DataError(f"{path} is not a readable CSV ({reason}); replace it with the original file") from None
    if invalid_rows:
        row = invalid_rows[0]
        line = f"line {row.number}" if row.number is not None else "a row"
        raise DataError(f"{path} is malformed at {line}: expected {row.expected_columns} fields, found "
                         f"{row.actual_columns} ({row.text[:60]!r}); fix that line or replace the file")

    names = table.column_names
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise DataError(f"{path} has the column {duplicates[0]!r} more than once; give every column a unique name")
    if date_column not in names:
        listed = ", ".join(repr(name) for name in names[:_MAX_LISTED_COLUMNS])
        more = ", ..." if len(names) > _MAX_LISTED_COLUMNS else ""
        if date_column == DEFAULT_DATE_COLUMN:
            raise DataError(f"{path} has no 'date' column (its columns: {listed}{more}); TSLib files start with a "
                             "'date' column of timestamps (`mixbench data add NAME FILE.csv --date-column COLUMN` "
                             "registers a file that keeps them in another column)")
        # Only a column chosen when the file is added differs from TSLib's, so this is where that choice is checked.
        raise DataError(f"{{setting}} {date_column!r} is not a column of {path} (its columns: {listed}{more}); give "
                        "the column that holds the timestamps", setting="date_column")
    columns = tuple(name for name in names if name != date_column)
    if not columns:
        raise DataError(f"{path} has only a {date_column!r} column; add at least one numeric column")
    if table.num_rows == 0:
        raise DataError(f"{path} has a header but no data rows; replace it with the complete file")

    dates = _parse_dates(path, date_column, table.column(date_column))
    values = np.empty((table.num_rows, len(columns)), dtype=np.float64)
    for j, name in enumerate(columns):
        values[:, j] = _numeric_column(path, name, table.column(name))
    _check_finite(path, columns, values)
    _check_increasing(path, dates)
    return ParsedCSV(columns=columns, dates=dates, values=values)


def _row(index: int) -> str:
    """How a 0-based data row is named in messages: its 1-based row number and its line in the file."""
    return f"row {index + 1} (line {index + 2})"


def _parse_dates(path: Path, name: str, column: pa.ChunkedArray) -> np.ndarray:
    if column.null_count:
        missing = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{path} has no date at {_row(missing)}; give every row a timestamp")
    if pa.types.is_timestamp(column.type) or pa.types.is_date(column.type):
        return pc.cast(column, pa.timestamp("ns")).to_numpy().astype("datetime64[ns]")
    if not pa.types.is_string(column.type) and not pa.types.is_large_string(column.type):
        raise DataError(f"column {name!r} of {path} holds {column.type} values, not timestamps; write dates such as "
                         "2016-07-01 00:00:00")
    strings = column.to_pandas()
    parsed = pd.to_datetime(strings, errors="coerce")
    if parsed.isna().any():
        bad = int(np.flatnonzero(parsed.isna().to_numpy())[0])
        raise DataError(f"column {name!r} of {path} has {strings.iloc[bad]!r} at {_row(bad)}, which is not a date; "
                         "write dates such as 2016-07-01 00:00:00")
    return parsed.to_numpy().astype("datetime64[ns]")


def _numeric_column(path: Path, name: str, column: pa.ChunkedArray) -> np.ndarray:
    if pa.types.is_null(column.type):
        return np.full(len(column), np.nan)
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        # nulls (empty fields, 'NaN', 'NA') become NaN and are reported by the finiteness check
        return pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)
    for index, value in enumerate(column.to_pylist()):
        if value is None:
            continue
        try:
            float(value)
        except (TypeError, ValueError):
            raise DataError(f"column {name!r} of {path} is not numeric: {value!r} at {_row(index)}; fix or remove "
                             "that value") from None
    raise DataError(f"column {name!r} of {path} is not numeric ({column.type}); write plain numbers")


def _check_finite(path: Path, columns: tuple[str, ...], values: np.ndarray) -> None:
    bad = ~np.isfinite(values)
    if not bad.any():
        return
    row = int(np.flatnonzero(bad.any(axis=1))[0])
    column = int(np.flatnonzero(bad[row])[0])
    kind = "a missing or NaN value" if np.isnan(values[row, column]) else "an infinite value"
    raise DataError(f"column {columns[column]!r} of {path} has {kind} at {_row(row)}; fill in or drop that row")


def _check_increasing(path: Path, dates: np.ndarray) -> None:
    # A repeated timestamp is allowed: the standard weather.csv repeats 2020-05-12 06:00 and TSLib keeps both rows.
    steps = np.diff(dates.astype(np.int64))
    if (steps >= 0).all():
        return
    index = int(np.flatnonzero(steps < 0)[0]) + 1
    raise DataError(f"dates in {path} go back in time at {_row(index)}: {np.datetime_as_string(dates[index], 's')} "
                     f"follows {np.datetime_as_string(dates[index - 1], 's')}; sort the file by date")
