"""Fuzzing the CSV loader: random small CSVs either load into finite windows or raise a one-line domain error."""
from __future__ import annotations

import math
import string
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.data.files import resolve_dataset
from benchmarks.data.protocol import DataProtocol, ForecastData, load_forecast_data
from benchmarks.errors import MixbenchError

# `illness` splits by ratio (70/10/20), so a file of any length is a valid candidate.
DATASET_PATH = Path("illness") / "national_illness.csv"
PROTOCOL = DataProtocol(seq_len=4, pred_len=2, features="M", target="OT")


def load_unchecked(root: Path) -> ForecastData:
    return load_forecast_data(resolve_dataset("illness", root, download=False, verify=False), PROTOCOL)

cells = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32).map(repr),
    st.integers(-10**6, 10**6).map(str),
    st.text(string.ascii_letters + string.digits + ' ,."-:', max_size=6),
    st.just(""),
)
dates = st.one_of(
    st.integers(0, 5000).map(lambda day: str(np.datetime64("2020-01-01") + np.timedelta64(day, "D"))),
    st.text(string.printable.replace("\n", "").replace("\r", ""), max_size=12),
)


@st.composite
def csv_texts(draw) -> str:
    """A header (usually `date`, ..., `OT`) and 0-60 rows of mostly well-formed cells, sometimes ragged."""
    names = draw(st.lists(st.sampled_from(["date", "OT", "a", "b", "date", ""]), min_size=1, max_size=4))
    if draw(st.booleans()):
        names = ["date", *[name for name in names if name not in ("date", "OT")], "OT"]
    lines = [",".join(names)]
    sorted_days = draw(st.booleans())
    for row in range(draw(st.integers(0, 60))):
        width = len(names) if draw(st.integers(0, 9)) else draw(st.integers(1, len(names) + 2))
        first = str(np.datetime64("2020-01-01") + np.timedelta64(row, "D")) if sorted_days else draw(dates)
        lines.append(",".join([first, *[draw(cells) for _ in range(width - 1)]]))
    return "\n".join(lines) + draw(st.sampled_from(["\n", "", "\n\n"]))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=csv_texts())
def test_random_csvs_load_finite_windows_or_raise_a_domain_error(text: str, tmp_path_factory, monkeypatch) -> None:
    root = tmp_path_factory.mktemp("fuzz")
    monkeypatch.setenv("MIXBENCH_CACHE_DIR", str(root / "cache"))
    path = root / DATASET_PATH
    path.parent.mkdir(parents=True)
    path.write_text(text)
    try:
        data = load_unchecked(root)
    except MixbenchError as error:  # DataError for the file, SettingError when it has no 'OT' target column
        assert str(error) and "\n" not in str(error)
        return
    for split in (data.train, data.val, data.test):
        assert split.num_windows >= 1
        batch = split.batch(np.arange(split.num_windows))
        for tensor in batch:
            assert bool(tensor.isfinite().all())
    assert all(math.isfinite(value) for value in [*data.scaler_mean, *data.scaler_std])


def test_the_fuzzer_reaches_both_outcomes(tmp_path, monkeypatch) -> None:
    """The strategy is not vacuous: a clean file loads and a ragged one is refused."""
    monkeypatch.setenv("MIXBENCH_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / DATASET_PATH
    path.parent.mkdir(parents=True)
    rows = [f"{np.datetime64('2020-01-01') + np.timedelta64(day, 'D')},{day % 7},{day * 0.5}" for day in range(60)]
    path.write_text("date,a,OT\n" + "\n".join(rows) + "\n")
    data = load_unchecked(tmp_path)
    assert data.n_channels == 2 and data.test.num_windows > 0
    path.write_text("date,a,OT\n" + "\n".join(rows[:30] + ["2021-01-01,1"] + rows[30:]) + "\n")
    try:
        load_unchecked(tmp_path)
    except MixbenchError as error:
        assert "malformed" in str(error)
    else:
        raise AssertionError("a ragged CSV loaded")
