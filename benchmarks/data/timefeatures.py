"""Time-Series-Library's `timeF` calendar features: each a value in [-0.5, 0.5] per timestamp.

Mirrors TSLib utils/timefeatures.py (itself from GluonTS); the frequency string picks the features.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from benchmarks.errors import SettingError


def second_of_minute(index: pd.DatetimeIndex) -> np.ndarray:
    return index.second / 59.0 - 0.5


def minute_of_hour(index: pd.DatetimeIndex) -> np.ndarray:
    return index.minute / 59.0 - 0.5


def hour_of_day(index: pd.DatetimeIndex) -> np.ndarray:
    return index.hour / 23.0 - 0.5


def day_of_week(index: pd.DatetimeIndex) -> np.ndarray:
    return index.day_of_week / 6.0 - 0.5


def day_of_month(index: pd.DatetimeIndex) -> np.ndarray:
    return (index.day - 1) / 30.0 - 0.5


def day_of_year(index: pd.DatetimeIndex) -> np.ndarray:
    return (index.day_of_year - 1) / 365.0 - 0.5


def month_of_year(index: pd.DatetimeIndex) -> np.ndarray:
    return (index.month - 1) / 11.0 - 0.5


def week_of_year(index: pd.DatetimeIndex) -> np.ndarray:
    return (index.isocalendar().week.to_numpy(dtype=np.float64) - 1) / 52.0 - 0.5


# Frequency unit -> features, in TSLib's order. Units are TSLib's (pandas 1.x) aliases, matched case-insensitively,
# because current pandas no longer parses several of them ('t', 'm', 'H').
_FEATURES_BY_UNIT = {
    "y": [], "a": [], "ye": [],
    "q": [month_of_year], "qe": [month_of_year], "m": [month_of_year], "me": [month_of_year],
    "w": [day_of_month, week_of_year],
    "d": [day_of_week, day_of_month, day_of_year],
    "b": [day_of_week, day_of_month, day_of_year],
    "h": [hour_of_day, day_of_week, day_of_month, day_of_year],
    "t": [minute_of_hour, hour_of_day, day_of_week, day_of_month, day_of_year],
    "min": [minute_of_hour, hour_of_day, day_of_week, day_of_month, day_of_year],
    "s": [second_of_minute, minute_of_hour, hour_of_day, day_of_week, day_of_month, day_of_year],
}
_FREQ_PATTERN = re.compile(r"^\s*(\d*)\s*([A-Za-z]+)(-[A-Za-z]+)?\s*$")


def feature_functions(freq: str) -> list:
    """The feature functions for a frequency string such as 'h', '15min', 't', 'd' or 'w'."""
    match = _FREQ_PATTERN.match(freq) if isinstance(freq, str) else None
    unit = match.group(2).lower() if match else None
    if unit not in _FEATURES_BY_UNIT:
        raise SettingError(
            f"{{setting}} {freq!r} is not a supported time-feature frequency; use one of "
            "s, t (or min), h, d, b, w, m, y, optionally with a multiple such as 15min", setting="freq")
    return _FEATURES_BY_UNIT[unit]


def n_time_features(freq: str) -> int:
    """How many features `time_features` returns per timestamp for `freq` (4 for TSLib's default 'h')."""
    return len(feature_functions(freq))


def time_features(dates: np.ndarray | pd.DatetimeIndex, freq: str = "h") -> np.ndarray:
    """(rows, F) float64 calendar features of `dates`, each in [-0.5, 0.5], as TSLib's `timeenc=1`."""
    index = pd.DatetimeIndex(dates)
    functions = feature_functions(freq)
    if not functions:
        return np.zeros((len(index), 0), dtype=np.float64)
    return np.stack([np.asarray(function(index), dtype=np.float64) for function in functions], axis=1)
