"""The TSLib protocol as tensors: window counts, scaler, window contents, batching and every bad input."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.data.files import resolve_dataset
from benchmarks.data.protocol import DataProtocol, ForecastData, WindowedSplit, load_forecast_data
from benchmarks.data.timefeatures import time_features
from benchmarks.errors import DataError, SettingError


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MIXBENCH_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


def load(name: str, protocol: DataProtocol = DataProtocol(), data_dir: Path | None = None, **options) -> ForecastData:
    """Registered dataset `name` from `data_dir` under `protocol`, as a command loads it."""
    return load_forecast_data(resolve_dataset(name, data_dir, **options), protocol)


@pytest.fixture(scope="module")
def weather(shared_data_dir):
    return load("weather", DataProtocol(seq_len=96, pred_len=96), shared_data_dir)


@pytest.fixture(scope="module")
def etth1(shared_data_dir):
    return load("ETTh1", DataProtocol(seq_len=96, pred_len=96), shared_data_dir)


def raw_csv(path: Path) -> pd.DataFrame:
    """The CSV as TSLib reads it (pandas), independent of our pyarrow parser."""
    return pd.read_csv(path)


def write_csv(path: Path, n_rows: int, columns=("a", "OT", "b"), start="2020-01-01", freq="h") -> np.ndarray:
    """A small TSLib CSV whose value at (row r, column j) is 1000 * j + r; returns the values."""
    values = np.arange(n_rows)[:, None] + 1000.0 * np.arange(len(columns))[None, :]
    frame = pd.DataFrame(values, columns=list(columns))
    frame.insert(0, "date", pd.date_range(start, periods=n_rows, freq=freq).strftime("%Y-%m-%d %H:%M:%S"))
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return values


# --- the real data ------------------------------------------------------------------------------------------------

def test_weather_window_counts(weather):
    assert (len(weather.train), len(weather.val), len(weather.test)) == (36_696, 5_175, 10_444)
    assert weather.train.num_windows == 36_696


def test_etth1_window_counts(etth1):
    assert (len(etth1.train), len(etth1.val), len(etth1.test)) == (8_449, 2_785, 2_785)


def test_shapes_and_channels(weather):
    assert (weather.n_channels, weather.n_targets, weather.n_time_features) == (21, 21, 4)
    assert weather.columns[-1] == "OT"
    assert weather.train.values.dtype == torch.float32 and weather.train.values.is_contiguous()
    assert weather.train.values.shape == (36_887, 21) and weather.train.marks.shape == (36_887, 4)
    assert weather.file.sha256 == "34ee981d07313e51da2a50bb600072c8ae4a69cb4b0651f4cb93a069d7a2ba63"


@pytest.mark.parametrize("name, train_rows", [("weather", 36_887), ("ETTh1", 8_640)])
def test_scaler_is_mean_and_population_std_of_training_rows(shared_data_dir, weather, etth1, name, train_rows):
    data = weather if name == "weather" else etth1
    frame = raw_csv(data.file.path)
    train = frame[list(data.columns)].to_numpy()[:train_rows]
    np.testing.assert_allclose(data.scaler_mean, train.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(data.scaler_std, train.std(axis=0, ddof=0), rtol=1e-12)
    assert data.scaler_mean.dtype == np.float64


@pytest.mark.parametrize("split_name, start", [("train", 0), ("val", 36_887 - 96), ("test", 52_696 - 10_539 - 96)])
def test_windows_equal_naive_slices_of_the_scaled_csv(weather, split_name, start):
    frame = raw_csv(weather.file.path)
    scaled = (frame[list(weather.columns)].to_numpy() - weather.scaler_mean) / weather.scaler_std
    marks = time_features(pd.to_datetime(frame["date"]).to_numpy(), "h")
    split = getattr(weather, split_name)
    index = torch.tensor([0, 1, 17, split.num_windows // 2, split.num_windows - 1])
    batch = split.batch(index)
    for b, i in enumerate(index.tolist()):
        row = start + i
        np.testing.assert_allclose(batch.x[b].numpy(), scaled[row:row + 96], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(batch.y[b].numpy(), scaled[row + 96:row + 192], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(batch.x_mark[b].numpy(), marks[row:row + 96], atol=1e-7)
        np.testing.assert_allclose(batch.y_mark[b].numpy(), marks[row + 96:row + 192], atol=1e-7)


def test_training_rows_are_standardised(weather):
    values = weather.train.values.double()
    np.testing.assert_allclose(values.mean(0).numpy(), 0, atol=1e-5)
    np.testing.assert_allclose(values.std(0, unbiased=False).numpy(), 1, atol=1e-5)


def test_last_test_window_ends_on_the_last_row(weather):
    assert weather.test.first_row + weather.test.num_rows == 52_696
    assert weather.val.first_row + 96 == weather.train.num_rows  # the first val forecast starts on the val border


def test_batches_are_contiguous_float32_of_contract_shapes(weather):
    batch = next(weather.train.iter_batches(8))
    assert batch.x.shape == (8, 96, 21) and batch.y.shape == (8, 96, 21)
    assert batch.x_mark.shape == (8, 96, 4) and batch.y_mark.shape == (8, 96, 4)
    assert all(t.dtype == torch.float32 and t.is_contiguous() for t in batch)


def test_limit_caps_batches_and_the_last_batch_is_partial(etth1):
    sizes = [batch.x.shape[0] for batch in etth1.val.iter_batches(1000)]
    assert sizes == [1000, 1000, 785]
    assert [batch.x.shape[0] for batch in etth1.val.iter_batches(1000, limit=2)] == [1000, 1000]
    assert list(etth1.val.iter_batches(1000, limit=0)) == []


def test_s_and_ms_on_etth1(shared_data_dir):
    single = load("ETTh1", DataProtocol(features="S"), shared_data_dir)
    assert (single.n_channels, single.n_targets, single.columns) == (1, 1, ("OT",))
    assert single.train.batch(torch.tensor([0])).x.shape == (1, 96, 1)
    multi = load("ETTh1", DataProtocol(features="MS"), shared_data_dir)
    assert (multi.n_channels, multi.n_targets) == (7, 1)
    assert multi.columns == ("HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT")
    # S scales the target alone: the same statistics as the target column under MS
    assert single.scaler_mean[0] == pytest.approx(multi.scaler_mean[-1], rel=1e-12)


def test_unscaled_data_keeps_the_csv_values(shared_data_dir):
    data = load("ETTh1", DataProtocol(scale=False), shared_data_dir)
    frame = raw_csv(data.file.path)
    np.testing.assert_allclose(data.test.values.numpy(), frame[list(data.columns)].to_numpy()[11_424:14_400],
                               rtol=1e-6)
    np.testing.assert_array_equal(data.scaler_mean, np.zeros(7))
    np.testing.assert_array_equal(data.scaler_std, np.ones(7))


def test_to_moves_every_split(etth1):
    moved = etth1.to("cpu")
    assert moved.test.device == torch.device("cpu") and len(moved.test) == len(etth1.test)


# --- protocol rules on small files in a private data dir ------------------------------------------------------------

def test_custom_datasets_move_the_target_last(tmp_path):
    write_csv(tmp_path / "illness" / "national_illness.csv", 200, columns=("a", "OT", "b"))
    data = load("illness", DataProtocol(seq_len=8, pred_len=4, features="MS"), tmp_path, verify=False)
    assert data.columns == ("a", "b", "OT")
    other_target = load("illness", DataProtocol(seq_len=8, pred_len=4, target="a"), tmp_path, verify=False)
    assert other_target.columns == ("OT", "b", "a")


def test_ett_keeps_the_file_column_order(tmp_path):
    write_csv(tmp_path / "ETT-small" / "ETTh2.csv", 14_400, columns=("HUFL", "OT", "LULL"))
    data = load("ETTh2", DataProtocol(seq_len=8, pred_len=4), tmp_path, verify=False)
    assert data.columns == ("HUFL", "OT", "LULL")
    with pytest.raises(SettingError, match="forecasts its last column 'LULL' under MS, not target 'OT'"):
        load("ETTh2", DataProtocol(seq_len=8, pred_len=4, features="MS"), tmp_path, verify=False)
    ms_on_lull = load("ETTh2", DataProtocol(seq_len=8, pred_len=4, features="MS", target="LULL"), tmp_path,
                      verify=False)
    assert ms_on_lull.columns[-1] == "LULL"


def test_every_window_is_visited_once_per_pass(tmp_path):
    write_csv(tmp_path / "illness" / "national_illness.csv", 300)
    protocol = DataProtocol(seq_len=5, pred_len=3, scale=False)
    data = load("illness", protocol, tmp_path, verify=False)
    for split in (data.train, data.val, data.test):
        for shuffle in (False, True):
            batches = list(split.iter_batches(7, shuffle=shuffle, generator=torch.Generator().manual_seed(1)))
            # column 'a' holds the row number, so x[:, 0, 0] is the first file row of each window
            starts = torch.cat([batch.x[:, 0, 0] for batch in batches]).long() - split.first_row
            assert sorted(starts.tolist()) == list(range(split.num_windows))
            if not shuffle:
                assert starts.tolist() == list(range(split.num_windows))
            for batch in batches:
                rows = batch.x[:, :, 0]
                assert torch.equal(rows[:, 1:] - rows[:, :-1], torch.ones_like(rows[:, 1:]))
                assert torch.equal(batch.y[:, 0, 0], batch.x[:, -1, 0] + 1)


def test_shuffle_is_reproducible_from_the_generator(tmp_path):
    write_csv(tmp_path / "illness" / "national_illness.csv", 300)
    data = load("illness", DataProtocol(seq_len=5, pred_len=3, scale=False), tmp_path, verify=False)

    def order(seed: int) -> list[float]:
        generator = torch.Generator().manual_seed(seed)
        return torch.cat([b.x[:, 0, 0] for b in data.train.iter_batches(16, True, generator)]).tolist()

    assert order(3) == order(3)
    assert order(3) != order(4)


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(2, 40), seq_len=st.integers(1, 12), pred_len=st.integers(1, 12), data=st.data())
def test_window_split_matches_naive_slicing(rows, seq_len, pred_len, data):
    if rows < seq_len + pred_len:
        with pytest.raises(DataError, match="fewer than seq_len \\+ pred_len"):
            WindowedSplit("train", torch.zeros(rows, 2), torch.zeros(rows, 1), seq_len, pred_len, 0)
        return
    values = torch.randn(rows, 3)
    marks = torch.randn(rows, 2)
    split = WindowedSplit("train", values, marks, seq_len, pred_len, 0)
    assert len(split) == rows - seq_len - pred_len + 1
    index = torch.tensor(data.draw(st.lists(st.integers(0, len(split) - 1), min_size=1, max_size=6)))
    batch = split.batch(index)
    for b, i in enumerate(index.tolist()):
        assert torch.equal(batch.x[b], values[i:i + seq_len])
        assert torch.equal(batch.y[b], values[i + seq_len:i + seq_len + pred_len])
        assert torch.equal(batch.x_mark[b], marks[i:i + seq_len])
        assert torch.equal(batch.y_mark[b], marks[i + seq_len:i + seq_len + pred_len])


# --- bad input ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, fragment", [
    ({"seq_len": 0}, "seq_len must be a positive integer, got 0"),
    ({"pred_len": -96}, "pred_len must be a positive integer, got -96"),
    ({"seq_len": 9.5}, "seq_len must be a positive integer"),
    ({"features": "X"}, "features must be 'M', 'S' or 'MS'"),
    ({"target": ""}, "target must be a column name"),
    ({"freq": "fortnight"}, "freq 'fortnight' is not a supported"),
])
def test_bad_protocol_is_setting_error(kwargs, fragment):
    with pytest.raises(SettingError, match=fragment.replace("+", "\\+")) as error:
        DataProtocol(**kwargs)
    assert error.value.setting == fragment.split()[0]


def test_protocol_is_frozen_with_tslib_defaults():
    protocol = DataProtocol()
    assert (protocol.seq_len, protocol.pred_len, protocol.features, protocol.target, protocol.scale,
            protocol.freq) == (96, 96, "M", None, True, "h")  # target None: the dataset's (OT for TSLib's files)
    with pytest.raises(AttributeError):
        protocol.seq_len = 1


def test_loading_reads_the_resolved_file_and_hashes_nothing(shared_data_dir, monkeypatch):
    file = resolve_dataset("ETTh1", shared_data_dir)
    monkeypatch.setattr("benchmarks.data.files._hash_contents", lambda path: pytest.fail(f"{path} hashed again"))
    data = load_forecast_data(file, DataProtocol(seq_len=48, pred_len=24))
    assert data.file is file and data.columns[-1] == "OT" and len(data.train) == 8_640 - 48 - 24 + 1


@pytest.mark.parametrize("features", ["S", "MS", "M"])
def test_missing_target_is_setting_error(tmp_path, features):
    write_csv(tmp_path / "illness" / "national_illness.csv", 200, columns=("a", "b"))
    with pytest.raises(SettingError, match="target 'OT' is not a column of .*national_illness.csv .*'a', 'b'"):
        load("illness", DataProtocol(seq_len=8, pred_len=4, features=features), tmp_path, verify=False)


def test_split_too_short_for_the_windows_names_the_split(tmp_path):
    write_csv(tmp_path / "illness" / "national_illness.csv", 100)
    # 100 rows: 70 train, 10 val, 20 test; a 12-row forecast leaves no val window
    with pytest.raises(DataError, match="illness: the val split has 18 rows, fewer than seq_len \\+ pred_len = 20") \
            as error:
        load("illness", DataProtocol(seq_len=8, pred_len=12), tmp_path, verify=False)
    assert error.value.setting == "pred_len"
    assert error.value.render(lambda setting: "--pred-len").endswith("use a shorter seq_len or --pred-len")
    with pytest.raises(DataError, match="seq_len 80 reaches before the first row") as error:
        load("illness", DataProtocol(seq_len=80, pred_len=4), tmp_path, verify=False)
    assert error.value.setting == "seq_len"


def test_truncated_ett_file_is_data_error(tmp_path):
    write_csv(tmp_path / "ETT-small" / "ETTm2.csv", 1_000)
    with pytest.raises(DataError, match="has 1,000 rows but the ETTm2 split reads rows up to 57,600"):
        load("ETTm2", DataProtocol(seq_len=8, pred_len=4), tmp_path, verify=False)


@pytest.mark.parametrize("content, fragment", [
    ("date,HUFL,OT\n2016-07-01 00:00:00,1,2\n2016-07-01 01:00:00,1\n", "malformed at line 3"),
    ("when,HUFL,OT\n2016-07-01 00:00:00,1,2\n", "no 'date' column"),
    ("date,HUFL,OT\n2016-07-01 00:00:00,1,2\n2016-07-01 01:00:00,nan,2\n", "column 'HUFL' .* missing or NaN .* row 2"),
    ("date,HUFL,OT\n2016-07-01 00:00:00,1,2\n2016-07-01 01:00:00,1,inf\n", "column 'OT' .* infinite value at row 2"),
    ("date,HUFL,OT\n2016-07-01 01:00:00,1,2\n2016-07-01 00:00:00,1,2\n", "go back in time at row 2"),
])
def test_bad_csv_in_a_known_hash_slot_loads_only_unverified_and_then_fails(tmp_path, content, fragment):
    path = tmp_path / "ETT-small" / "ETTh1.csv"
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(DataError, match="should have f18de3ad"):
        resolve_dataset("ETTh1", tmp_path)
    with pytest.raises(DataError, match=fragment) as error:
        load("ETTh1", data_dir=tmp_path, verify=False)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_bad_batch_arguments_are_programming_errors(etth1):
    # the user's batch size and limits are checked where they enter (TrainConfig); these guard library callers
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        next(etth1.val.iter_batches(0))
    with pytest.raises(ValueError, match="limit must be None or a non-negative integer"):
        next(etth1.val.iter_batches(4, limit=-1))
    with pytest.raises(IndexError, match="must lie in \\[0, 2785\\)"):
        etth1.val.batch(torch.tensor([2785]))
    with pytest.raises(TypeError, match="must be integers"):
        etth1.val.batch(torch.tensor([0.5]))
