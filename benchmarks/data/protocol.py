"""The Time-Series-Library forecasting protocol as tensors: splits, scaling, time features and stride-1 windows.

`load_forecast_data` turns a resolved dataset file into the splits; each is stored once on the device and a batch of
windows is an index gather, so iterating never runs a Python loop per sample.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import numpy as np
import torch

from benchmarks.data.csvcache import ParsedCSV, load_csv
from benchmarks.data.files import DatasetFile
from benchmarks.data.registry import SPLIT_NAMES, split_bounds
from benchmarks.data.timefeatures import n_time_features, time_features
from benchmarks.errors import DataError, SettingError

Features = Literal["M", "S", "MS"]


@dataclass(frozen=True)
class DataProtocol:
    """How a dataset becomes forecasting windows; the defaults are TSLib's long-term forecasting settings."""

    seq_len: int = 96          # lookback rows per window
    pred_len: int = 96         # forecast rows per window
    features: Features = "M"   # M: all channels -> all; S: target -> target; MS: all channels -> target
    target: str | None = None  # the target column (None: the dataset's, OT for TSLib's files); M/MS put it last
    scale: bool = True         # standardise with mean/std of the training rows
    freq: str = "h"            # frequency string of the timeF features (TSLib's default 'h' for every dataset)

    def __post_init__(self) -> None:
        for name in ("seq_len", "pred_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise SettingError(f"{{setting}} must be a positive integer, got {value!r}; use e.g. 96", setting=name)
        if self.features not in ("M", "S", "MS"):
            raise SettingError(f"{{setting}} must be 'M', 'S' or 'MS', got {self.features!r}", setting="features")
        if self.target is not None and (not isinstance(self.target, str) or not self.target):
            raise SettingError(f"{{setting}} must be a column name, got {self.target!r}; the TSLib default is 'OT'",
                               setting="target")
        n_time_features(self.freq)  # raises SettingError for an unknown frequency


class WindowBatch(NamedTuple):
    """A batch of windows, float32 on the split's device."""

    x: torch.Tensor        # (B, seq_len, C_in) lookback values
    y: torch.Tensor        # (B, pred_len, C_in) the values that follow
    x_mark: torch.Tensor   # (B, seq_len, F) time features of the lookback
    y_mark: torch.Tensor   # (B, pred_len, F) time features of the forecast rows


@dataclass(frozen=True, eq=False)
class WindowedSplit:
    """One split's rows, stored once; window i is rows [i, i + seq_len) followed by the next pred_len rows."""

    name: str
    values: torch.Tensor   # (rows, C_in) float32, contiguous
    marks: torch.Tensor    # (rows, F) float32, contiguous
    seq_len: int
    pred_len: int
    first_row: int         # the file row of values[0]
    _x_offsets: torch.Tensor = field(init=False, repr=False)
    _y_offsets: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.values.shape[0] != self.marks.shape[0]:
            raise ValueError(f"values have {self.values.shape[0]} rows but marks have {self.marks.shape[0]}")
        if self.num_windows < 1:
            raise DataError(f"the {self.name} split has {self.num_rows:,} rows, fewer than seq_len + {{setting}} = "
                            f"{self.seq_len + self.pred_len:,}; use a shorter seq_len or {{setting}}",
                            setting="pred_len")
        device = self.values.device
        object.__setattr__(self, "_x_offsets", torch.arange(self.seq_len, device=device))
        object.__setattr__(self, "_y_offsets", torch.arange(self.seq_len, self.seq_len + self.pred_len, device=device))

    @property
    def num_rows(self) -> int:
        return int(self.values.shape[0])

    @property
    def num_windows(self) -> int:
        return self.num_rows - self.seq_len - self.pred_len + 1

    @property
    def device(self) -> torch.device:
        return self.values.device

    def __len__(self) -> int:
        return self.num_windows

    def to(self, device: str | torch.device) -> WindowedSplit:
        """This split with its tensors on `device`."""
        return WindowedSplit(self.name, self.values.to(device), self.marks.to(device), self.seq_len, self.pred_len,
                             self.first_row)

    def batch(self, index: torch.Tensor) -> WindowBatch:
        """The windows whose first rows are `index` (a 1-D integer tensor on any device)."""
        index = torch.as_tensor(index).reshape(-1)
        if index.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"window indices must be integers, got {index.dtype}; pass a LongTensor")
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.num_windows):
            raise IndexError(f"window indices must lie in [0, {self.num_windows}) for the {self.name} split, got "
                             f"{int(index.min())}..{int(index.max())}")
        return self._gather(index.to(self.device, torch.int64))

    def iter_batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
                     limit: int | None = None) -> Iterator[WindowBatch]:
        """Every window once, `batch_size` at a time; the last batch may be partial; at most `limit` batches.

        Shuffling draws `torch.randperm` on the CPU from `generator` (a CPU generator), so the order is the same on
        every device for the same seed.
        """
        # TrainConfig validates the user's batch size and limits; these guard direct callers of the library
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise ValueError(f"limit must be None or a non-negative integer, got {limit!r}")
        n = self.num_windows
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        order = order.to(self.device)
        n_batches = math.ceil(n / batch_size) if limit is None else min(math.ceil(n / batch_size), limit)
        for start in range(0, n_batches * batch_size, batch_size):
            yield self._gather(order[start:start + batch_size])

    def iter_member_batches(self, batch_size: int, generators: list[torch.Generator],
                            limit: int | None = None) -> Iterator[WindowBatch]:
        """The shuffled batches of K training runs at once, one run per generator: tensors are (K, B, ...), and run
        k's batches are exactly `iter_batches(batch_size, shuffle=True, generator=generators[k], limit=limit)`'s."""
        n = self.num_windows
        orders = torch.stack([torch.randperm(n, generator=generator) for generator in generators]).to(self.device)
        n_batches = math.ceil(n / batch_size) if limit is None else min(math.ceil(n / batch_size), limit)
        for start in range(0, n_batches * batch_size, batch_size):
            yield self._gather(orders[:, start:start + batch_size])

    def _gather(self, index: torch.Tensor) -> WindowBatch:
        """The windows starting at `index` (any shape S): tensors of shape S + (rows, columns)."""
        # index_select on flattened row numbers is several times faster on the CPU than 2-D advanced indexing
        shape, channels, features = tuple(index.shape), self.values.shape[1], self.marks.shape[1]
        x_rows = (index[..., None] + self._x_offsets).reshape(-1)   # (prod(S) * seq_len,)
        y_rows = (index[..., None] + self._y_offsets).reshape(-1)   # (prod(S) * pred_len,)
        return WindowBatch(
            self.values.index_select(0, x_rows).view(*shape, self.seq_len, channels),
            self.values.index_select(0, y_rows).view(*shape, self.pred_len, channels),
            self.marks.index_select(0, x_rows).view(*shape, self.seq_len, features),
            self.marks.index_select(0, y_rows).view(*shape, self.pred_len, features),
        )


@dataclass(frozen=True, eq=False)
class ForecastData:
    """A dataset under a protocol: three windowed splits plus what produced them."""

    file: DatasetFile             # the registered dataset's CSV the splits came from
    protocol: DataProtocol
    columns: tuple[str, ...]      # names of the C_in input channels, in tensor order (target last for S/MS)
    scaler_mean: np.ndarray       # (C_in,) float64, from the training rows (zeros when scale=False)
    scaler_std: np.ndarray        # (C_in,) float64, population std of the training rows (ones when scale=False)
    train: WindowedSplit
    val: WindowedSplit
    test: WindowedSplit

    @property
    def n_channels(self) -> int:
        return len(self.columns)

    @property
    def n_targets(self) -> int:
        return self.n_channels if self.protocol.features == "M" else 1

    @property
    def n_time_features(self) -> int:
        return int(self.train.marks.shape[1])

    @property
    def splits(self) -> dict[str, WindowedSplit]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def to(self, device: str | torch.device) -> ForecastData:
        """This data with every split's tensors on `device`."""
        return ForecastData(self.file, self.protocol, self.columns, self.scaler_mean, self.scaler_std,
                            self.train.to(device), self.val.to(device), self.test.to(device))


def load_forecast_data(dataset: DatasetFile, protocol: DataProtocol = DataProtocol(),
                       device: str | torch.device = "cpu") -> ForecastData:
    """`dataset` (from `resolve_dataset`, already found and hashed) under `protocol`, with the splits on `device`."""
    spec = dataset.spec
    parsed = load_csv(dataset.path, dataset.sha256, spec.date_column)
    if protocol.target is None:
        protocol = dataclasses.replace(protocol, target=spec.target)
    columns = _input_columns(dataset, parsed, protocol)
    raw = parsed.values[:, [parsed.columns.index(column) for column in columns]]   # (rows, C_in) float64
    bounds = _checked_bounds(dataset, parsed.n_rows, protocol)

    train_start, train_end = bounds["train"]
    if protocol.scale:
        mean = raw[train_start:train_end].mean(axis=0)
        std = raw[train_start:train_end].std(axis=0)
        # sklearn's StandardScaler leaves a constant channel unscaled rather than dividing by zero
        std = np.where(std == 0.0, 1.0, std)
        scaled = (raw - mean) / std
    else:
        mean, std, scaled = np.zeros(len(columns)), np.ones(len(columns)), raw
    marks = time_features(parsed.dates, protocol.freq)                               # (rows, F) float64

    splits = {}
    for split, (start, end) in bounds.items():
        values = torch.from_numpy(np.ascontiguousarray(scaled[start:end], dtype=np.float32))
        split_marks = torch.from_numpy(np.ascontiguousarray(marks[start:end], dtype=np.float32))
        try:
            splits[split] = WindowedSplit(split, values.to(device), split_marks.to(device), protocol.seq_len,
                                          protocol.pred_len, start)
        except DataError as error:
            raise DataError(f"{spec.name}: {error.template}", setting=error.setting) from None
    return ForecastData(file=dataset, protocol=protocol, columns=columns, scaler_mean=mean, scaler_std=std, **splits)


def _input_columns(dataset: DatasetFile, parsed: ParsedCSV, protocol: DataProtocol) -> tuple[str, ...]:
    """The input channels in TSLib's order: S the target alone; M/MS all columns, target last (ETT: file order)."""
    target = protocol.target
    if target not in parsed.columns:
        listed = ", ".join(repr(column) for column in parsed.columns[:8])
        raise SettingError(f"{{setting}} {target!r} is not a column of {dataset.path} (columns: {listed}"
                           f"{', ...' if len(parsed.columns) > 8 else ''}); pass one of them as {{setting}}",
                           setting="target")
    if protocol.features == "S":
        return (target,)
    if dataset.spec.column_order == "file":
        if protocol.features == "MS" and parsed.columns[-1] != target:
            raise SettingError(f"TSLib's ETT loader keeps the file's column order and forecasts its last column "
                               f"{parsed.columns[-1]!r} under MS, not {{setting}} {target!r}; use "
                               f"{{setting}} {parsed.columns[-1]!r}, or features S", setting="target")
        return parsed.columns
    return tuple(column for column in parsed.columns if column != target) + (target,)


def _checked_bounds(dataset: DatasetFile, n_rows: int, protocol: DataProtocol) -> dict[str, tuple[int, int]]:
    bounds = split_bounds(dataset.spec.split_rule, n_rows, protocol.seq_len)
    needed = bounds["test"][1]
    if needed > n_rows:
        raise DataError(f"{dataset.path} has {n_rows:,} rows but the {dataset.name} split reads rows up to "
                        f"{needed:,}; use the complete file")
    for split in SPLIT_NAMES:
        start, _ = bounds[split]
        if start < 0:
            raise DataError(f"{dataset.name}: {{setting}} {protocol.seq_len:,} reaches before the first row for the "
                            f"{split} split (only {bounds['train'][1]:,} training rows); use a shorter {{setting}}",
                            setting="seq_len")
    return bounds
