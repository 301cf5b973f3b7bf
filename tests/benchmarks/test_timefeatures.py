"""timeF features: TSLib's formulas, ranges and the frequency table."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmarks.data.timefeatures import n_time_features, time_features
from benchmarks.errors import SettingError


def test_hourly_features_follow_tslib_formulas():
    dates = pd.DatetimeIndex(["2016-07-01 00:00", "2016-12-31 23:00", "2020-02-29 12:00"])
    features = time_features(dates, "h")
    # HourOfDay, DayOfWeek, DayOfMonth, DayOfYear
    expected = np.array([
        [0 / 23 - 0.5, 4 / 6 - 0.5, 0 / 30 - 0.5, 182 / 365 - 0.5],
        [23 / 23 - 0.5, 5 / 6 - 0.5, 30 / 30 - 0.5, 365 / 365 - 0.5],
        [12 / 23 - 0.5, 5 / 6 - 0.5, 28 / 30 - 0.5, 59 / 365 - 0.5],
    ])
    np.testing.assert_allclose(features, expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("freq, count", [("h", 4), ("H", 4), ("3h", 4), ("t", 5), ("15min", 5), ("s", 6), ("d", 3),
                                         ("b", 3), ("w", 2), ("m", 1), ("ME", 1), ("y", 0)])
def test_feature_count_per_frequency(freq, count):
    dates = pd.date_range("2020-01-01", periods=5, freq="17h")
    assert n_time_features(freq) == count
    assert time_features(dates, freq).shape == (5, count)


@pytest.mark.parametrize("freq", ["s", "t", "h", "d", "w", "m"])
def test_features_stay_within_half_a_unit(freq):
    dates = pd.date_range("2019-01-01", "2021-12-31 23:59:59", periods=5000)
    features = time_features(dates, freq)
    assert features.min() >= -0.5 and features.max() <= 0.5


def test_minute_features_start_with_minute_of_hour():
    features = time_features(pd.DatetimeIndex(["2020-01-01 05:59"]), "t")
    assert features[0, 0] == pytest.approx(59 / 59 - 0.5)
    assert features[0, 1] == pytest.approx(5 / 23 - 0.5)


@pytest.mark.parametrize("freq", ["fortnight", "ms", "", "15"])
def test_unknown_frequency_is_setting_error(freq):
    with pytest.raises(SettingError, match="not a supported time-feature frequency") as error:
        n_time_features(freq)
    assert error.value.setting == "freq" and str(error.value).startswith(f"freq {freq!r} ")
