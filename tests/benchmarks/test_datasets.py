"""The dataset registry: names, file layout, shapes against the real files, and TSLib's split borders."""
from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from benchmarks.data.registry import DATASETS, get_dataset, split_bounds
from benchmarks.errors import DataError

TSLIB_LAYOUT = {
    "weather": "weather/weather.csv",
    "ETTh1": "ETT-small/ETTh1.csv",
    "ETTh2": "ETT-small/ETTh2.csv",
    "ETTm1": "ETT-small/ETTm1.csv",
    "ETTm2": "ETT-small/ETTm2.csv",
    "electricity": "electricity/electricity.csv",
    "traffic": "traffic/traffic.csv",
    "exchange_rate": "exchange_rate/exchange_rate.csv",
    "illness": "illness/national_illness.csv",
}


def test_registry_holds_the_nine_tslib_datasets_in_their_layout():
    assert {name: spec.path for name, spec in DATASETS.items()} == TSLIB_LAYOUT
    assert list(DATASETS) == list(TSLIB_LAYOUT)


def test_known_checksums_are_recorded():
    assert get_dataset("weather").sha256 == "34ee981d07313e51da2a50bb600072c8ae4a69cb4b0651f4cb93a069d7a2ba63"
    assert get_dataset("ETTh1").sha256 == "f18de3ad269cef59bb07b5438d79bb3042d3be49bdeecf01c1cd6d29695ee066"


@pytest.mark.parametrize("name", ["weather", "ETTh1"])
def test_registry_shape_matches_the_real_file(shared_data_dir, name):
    spec = get_dataset(name)
    frame = pd.read_csv(shared_data_dir / spec.path)
    assert frame.columns[0] == "date"
    assert (len(frame), frame.shape[1] - 1) == (spec.n_rows, spec.n_channels)


@pytest.mark.parametrize("typed, expected", [("etth1", "ETTh1"), ("WEATHER", "weather"),
                                             (" Exchange_Rate ", "exchange_rate")])
def test_lookup_ignores_case(typed, expected):
    assert get_dataset(typed).name == expected


@pytest.mark.parametrize("typed, closest", [("wether", "weather"), ("ETTh3", "ETTh"), ("electricty", "electricity"),
                                            ("ili", "illness")])
def test_unknown_name_suggests_the_closest(typed, closest):
    with pytest.raises(DataError) as error:
        get_dataset(typed)
    message = str(error.value)
    assert error.value.setting == "dataset" and "\n" not in message
    assert f"unknown dataset {typed!r}" in message
    assert f"did you mean '{closest}" in message


def test_ett_hour_borders_are_tslib_constants():
    assert split_bounds("ett_hour", 17_420, 96) == {
        "train": (0, 8640), "val": (8640 - 96, 11520), "test": (11520 - 96, 14400)}


def test_ett_minute_borders_are_four_times_the_hourly_ones():
    assert split_bounds("ett_minute", 69_680, 96) == {
        "train": (0, 34560), "val": (34560 - 96, 46080), "test": (46080 - 96, 57600)}


def test_ratio_borders_truncate_like_tslib_on_weather():
    # int(52696 * 0.7) = 36887 train rows, int(52696 * 0.2) = 10539 test rows, 5270 left for validation
    assert split_bounds("ratio_70_10_20", 52_696, 96) == {
        "train": (0, 36887), "val": (36887 - 96, 42157), "test": (52696 - 10539 - 96, 52696)}


@given(n_rows=st.integers(10, 200_000), seq_len=st.integers(1, 720))
def test_ratio_splits_cover_the_file_and_look_back_seq_len(n_rows, seq_len):
    bounds = split_bounds("ratio_70_10_20", n_rows, seq_len)
    num_train = int(n_rows * 0.7)
    num_test = int(n_rows * 0.2)
    assert bounds["train"] == (0, num_train)
    assert bounds["val"] == (num_train - seq_len, n_rows - num_test)
    assert bounds["test"] == (n_rows - num_test - seq_len, n_rows)
