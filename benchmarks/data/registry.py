"""The registry of benchmark datasets: where each file lies, its shape, checksum and Time-Series-Library split rule.

Split rules mirror TSLib data_provider/data_loader.py: Dataset_ETT_hour, Dataset_ETT_minute and Dataset_Custom.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Literal

from benchmarks.errors import DataError

SplitRule = Literal["ett_hour", "ett_minute", "ratio_70_10_20"]
SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class DatasetSpec:
    """One benchmark dataset in the Time-Series-Library layout."""

    name: str
    path: str                # relative to the data dir, and the same path in the Hugging Face dataset repo
    n_channels: int          # value columns besides `date`
    n_rows: int              # data rows (without the header)
    frequency: str           # sampling interval of the rows (pandas alias)
    split_rule: SplitRule
    sha256: str | None       # of the file as distributed; None where no reference hash is recorded
    description: str

    @property
    def column_order(self) -> Literal["file", "target_last"]:
        """TSLib's ETT loaders keep the file's column order; Dataset_Custom moves the target column last."""
        return "file" if self.split_rule in ("ett_hour", "ett_minute") else "target_last"


_SPECS = (
    DatasetSpec("weather", "weather/weather.csv", 21, 52_696, "10min", "ratio_70_10_20",
                "34ee981d07313e51da2a50bb600072c8ae4a69cb4b0651f4cb93a069d7a2ba63",
                "Jena weather station, 2020, 10-minute readings"),
    DatasetSpec("ETTh1", "ETT-small/ETTh1.csv", 7, 17_420, "h", "ett_hour",
                "f18de3ad269cef59bb07b5438d79bb3042d3be49bdeecf01c1cd6d29695ee066",
                "electricity transformer 1, hourly"),
    DatasetSpec("ETTh2", "ETT-small/ETTh2.csv", 7, 17_420, "h", "ett_hour", None,
                "electricity transformer 2, hourly"),
    DatasetSpec("ETTm1", "ETT-small/ETTm1.csv", 7, 69_680, "15min", "ett_minute", None,
                "electricity transformer 1, 15-minute"),
    DatasetSpec("ETTm2", "ETT-small/ETTm2.csv", 7, 69_680, "15min", "ett_minute", None,
                "electricity transformer 2, 15-minute"),
    DatasetSpec("electricity", "electricity/electricity.csv", 321, 26_304, "h", "ratio_70_10_20", None,
                "hourly consumption of 321 clients"),
    DatasetSpec("traffic", "traffic/traffic.csv", 862, 17_544, "h", "ratio_70_10_20", None,
                "hourly road occupancy of 862 San Francisco sensors"),
    DatasetSpec("exchange_rate", "exchange_rate/exchange_rate.csv", 8, 7_588, "D", "ratio_70_10_20", None,
                "daily exchange rates of 8 countries"),
    DatasetSpec("illness", "illness/national_illness.csv", 7, 966, "W", "ratio_70_10_20", None,
                "weekly influenza-like illness, US CDC"),
)
DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in _SPECS}

SPLIT_RULE_LABELS: dict[str, str] = {
    "ett_hour": "ETT 12/4/4 months",
    "ett_minute": "ETT 12/4/4 months",
    "ratio_70_10_20": "70/10/20",
}


def get_dataset(name: str) -> DatasetSpec:
    """The registered dataset called `name`, in any case: the one place dataset names are matched.

    An unknown name raises DataError suggesting the closest registered one.
    """
    by_lower = {registered.lower(): spec for registered, spec in DATASETS.items()}
    spec = by_lower.get(str(name).strip().lower())
    if spec is not None:
        return spec
    close = difflib.get_close_matches(str(name).lower(), list(by_lower), n=1, cutoff=0.0)
    suggestion = f"did you mean {by_lower[close[0]].name!r}? " if close else ""
    raise DataError(f"unknown {{setting}} {name!r}; {suggestion}known datasets: {', '.join(DATASETS)}",
                    setting="dataset")


def split_bounds(rule: SplitRule, n_rows: int, seq_len: int) -> dict[str, tuple[int, int]]:
    """Row ranges [start, end) of train/val/test, exactly TSLib's border1s/border2s.

    Val and test start `seq_len` rows before their border so that their first window's forecast starts on it.
    """
    if rule in ("ett_hour", "ett_minute"):
        month = 30 * 24 * (4 if rule == "ett_minute" else 1)
        border1s = [0, 12 * month - seq_len, 12 * month + 4 * month - seq_len]
        border2s = [12 * month, 12 * month + 4 * month, 12 * month + 8 * month]
    elif rule == "ratio_70_10_20":
        num_train = int(n_rows * 0.7)
        num_test = int(n_rows * 0.2)
        num_vali = n_rows - num_train - num_test
        border1s = [0, num_train - seq_len, n_rows - num_test - seq_len]
        border2s = [num_train, num_train + num_vali, n_rows]
    else:
        raise ValueError(f"unknown split rule {rule!r}")
    return {split: (border1s[i], border2s[i]) for i, split in enumerate(SPLIT_NAMES)}
