"""Own data: `mixbench data add / list / info / remove`, the user registry, `--dataset FILE.csv`, the shape check of
registered files without a reference hash, split rules other than TSLib's and date columns other than `date`."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import cli
from benchmarks.data.files import resolve_dataset
from benchmarks.data.protocol import DataProtocol, load_forecast_data
from benchmarks.data.registry import (
    get_dataset,
    parse_split_rule,
    split_bounds,
    user_registry_path,
)
from benchmarks.errors import DataError
from tests.cli_runner import mixbench


@pytest.fixture(autouse=True)
def private_home(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MIXBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MIXBENCH_DATA_DIR", raising=False)


def run_main(args: list[str], capsys) -> tuple[int, str, str]:
    """Run `cli.main` as the `mixbench` script does: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args)
        raise SystemExit(0)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def write_own_csv(path, n_rows: int = 600, columns=("temp", "wind", "load"), freq: str = "h", date_column: str = "date",
                  date_position: int = 0):
    """A CSV of daily-periodic series without an `OT` column, its timestamps in `date_column` at `date_position`;
    returns the path."""
    steps = np.arange(n_rows)
    frame = pd.DataFrame({name: np.sin(2 * np.pi * steps / 24 + k) + 0.01 * k * steps
                          for k, name in enumerate(columns)})
    frame.insert(date_position, date_column,
                 pd.date_range("2021-01-01", periods=n_rows, freq=freq).strftime("%Y-%m-%d %H:%M:%S"))
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


def test_add_list_info_and_remove_own_data(tmp_path, capsys):
    csv = write_own_csv(tmp_path / "plant.csv")
    code, out, err = run_main(["data", "add", "plant", str(csv), "--target", "wind", "--split", "60/20/20"], capsys)
    assert code == 0, err
    assert "added plant: " in out and "600 rows, 3 channels, target wind, frequency h, 60/20/20 split" in out
    assert user_registry_path() == tmp_path / "home" / "datasets.yaml"
    spec = get_dataset("PLANT")
    assert (spec.name, spec.n_rows, spec.n_channels, spec.split_rule, spec.target, spec.source) == \
        ("plant", 600, 3, "ratio_60_20_20", "wind", "user")

    code, out, _ = run_main(["data", "list"], capsys)
    assert code == 0
    row = next(line for line in out.splitlines() if line.startswith("plant"))
    assert "60/20/20" in row and str(csv) in row and "yes" in row

    code, out, _ = run_main(["data", "info", "plant", "--seq-len", "24", "--pred-len", "12"], capsys)
    assert code == 0
    assert "target wind" in out and "60/20/20 split" in out
    # 600 rows: 360 train, 120 val, 120 test; val and test start seq_len rows early
    assert "train         360        325  [0, 360)" in out
    assert "test          144        109  [456, 600)" in out

    code, out, _ = run_main(["data", "remove", "plant"], capsys)
    assert code == 0 and "removed plant" in out
    with pytest.raises(DataError, match="unknown dataset 'plant'"):
        get_dataset("plant")


def test_own_target_is_last_and_the_split_rule_is_the_one_added(tmp_path, capsys):
    csv = write_own_csv(tmp_path / "plant.csv")
    assert run_main(["data", "add", "plant", str(csv), "--target", "temp", "--split", "0.5,0.25,0.25"], capsys)[0] == 0
    data = load_forecast_data(resolve_dataset("plant"), DataProtocol(seq_len=24, pred_len=12))
    assert data.columns == ("wind", "load", "temp") and data.protocol.target == "temp"
    assert data.train.num_rows == 300 and data.test.first_row == 450 - 24


@pytest.mark.parametrize("args, fragment", [
    (["data", "add", "weather", "{csv}"], "'weather' is a built-in dataset"),
    (["data", "add", "plant", "{csv}", "--split", "50/10/10"], "must each be positive and add up to 100"),
    (["data", "add", "plant", "{csv}", "--split", "months"], "is not a split rule"),
    (["data", "add", "plant", "{csv}", "--target", "OT"], "'OT' is not a column of"),
    (["data", "add", "plant", "{missing}"], "does not exist"),
    (["data", "add", "plant", "{nan}"], "missing or NaN value at row 3"),
    (["data", "add", "plant", "{backwards}"], "go back in time at row 2"),
])
def test_bad_own_data_is_one_line_and_exit_2(tmp_path, capsys, args, fragment):
    paths = {"csv": write_own_csv(tmp_path / "plant.csv"), "missing": tmp_path / "nope.csv",
             "nan": tmp_path / "nan.csv", "backwards": tmp_path / "backwards.csv"}
    paths["nan"].write_text("date,a\n2021-01-01 00:00:00,1\n2021-01-01 01:00:00,2\n2021-01-01 02:00:00,\n")
    paths["backwards"].write_text("date,a\n2021-01-01 01:00:00,1\n2021-01-01 00:00:00,2\n")
    code, _, err = run_main([arg.format(**paths) for arg in args], capsys)
    assert code == 2 and err.startswith("error: ") and fragment in err, err
    assert err.count("\n") == 1


NO_SUCH_CSV = "does not exist; give the path of a CSV or a registered name (`mixbench data list`)\n"


@pytest.mark.parametrize("args, expected", [
    (["data", "add", "plant", "{missing}"], "error: the file {missing} does not exist\n"),
    (["data", "add", "plant", "{missing}", "--date-column", "timestamp"], "error: the file {missing} does not exist\n"),
    (["data", "info", "{missing}"], "error: dataset {missing} " + NO_SUCH_CSV),
    (["train", "--model", "dlinear", "--dataset", "{missing}", "--pred-len", "12"],
     "error: --dataset {missing} " + NO_SUCH_CSV),
])
def test_a_missing_file_is_called_missing(tmp_path, args, expected):
    """Not "not a file; give the path of a CSV with a `date` column": the column is beside the point when there is
    no file, and `data add --date-column` may name another."""
    paths = {"missing": tmp_path / "nope.csv"}
    code, out, err = mixbench(*(arg.format(**paths) for arg in args))
    assert (code, out, err) == (2, "", expected.format(**paths))


def test_a_folder_given_as_the_csv_is_one_line_and_exit_2(tmp_path):
    folder = tmp_path / "plant.csv"
    folder.mkdir()
    code, out, err = mixbench("data", "info", str(folder))
    assert (code, out, err) == (2, "", f"error: dataset {folder} is not a file; give the path of a CSV\n")
    code, out, err = mixbench("data", "add", "plant", str(folder))
    assert code == 2 and err.startswith("error: ") and "is a directory" in err and err.count("\n") == 1


def test_adding_twice_needs_force_and_a_changed_file_is_refused(tmp_path, capsys):
    csv = write_own_csv(tmp_path / "plant.csv")
    assert run_main(["data", "add", "plant", str(csv)], capsys)[0] == 0
    code, _, err = run_main(["data", "add", "Plant", str(csv)], capsys)
    assert code == 2 and "already added" in err and "--force" in err
    write_own_csv(csv, n_rows=500)
    code, _, err = run_main(["data", "info", "plant", "--seq-len", "24", "--pred-len", "12"], capsys)
    assert code == 2 and "changed since it was added as plant" in err and err.count("\n") == 1
    assert run_main(["data", "add", "plant", str(csv), "--force"], capsys)[0] == 0
    assert get_dataset("plant").n_rows == 500


def test_a_mislabelled_file_in_a_registered_slot_is_refused(tmp_path, capsys):
    # 7 channels and 12,000 rows where exchange_rate (8 channels, 7,588 rows, no reference hash) belongs
    write_own_csv(tmp_path / "data" / "exchange_rate" / "exchange_rate.csv", n_rows=12_000,
                  columns=("a", "b", "c", "d", "e", "f", "OT"), freq="D")
    code, _, err = run_main(["data", "info", "exchange_rate", "--data-dir", str(tmp_path / "data")], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "has 12,000 rows and 7 channels but exchange_rate has 7,588 rows and 8 channels" in err
    assert "turn --verify off" in err


def test_a_csv_path_works_directly_with_the_70_10_20_split(tmp_path, capsys):
    csv = write_own_csv(tmp_path / "mine.csv", n_rows=1000)
    code, out, err = run_main(["data", "info", str(csv), "--seq-len", "24", "--pred-len", "12"], capsys)
    assert code == 0, err
    assert err.count("\n") == 1 and "dataset mine: " in err and "70/10/20 train/val/test split" in err
    assert "mine: the file" in out and "train         700" in out and "target load" in out
    file = resolve_dataset(str(csv))
    assert (file.name, file.spec.source, file.spec.split_rule) == ("mine", "file", "ratio_70_10_20")


def test_a_csv_path_named_like_a_registered_dataset_but_holding_other_data_is_refused(tmp_path):
    csv = write_own_csv(tmp_path / "weather.csv")
    with pytest.raises(DataError, match="named like the registered dataset 'weather' but holds other data"):
        resolve_dataset(str(csv))


def test_the_registered_file_given_as_a_path_keeps_its_name(shared_data_dir):
    file = resolve_dataset(str(shared_data_dir / "ETT-small" / "ETTh1.csv"))
    assert file.name == "ETTh1" and file.spec.split_rule == "ett_hour"


def test_training_on_a_csv_path_tags_the_run_with_its_name(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    csv = write_own_csv(tmp_path / "mine.csv", n_rows=800)
    code, out, err = run_main(["train", "--model", "dlinear", "--dataset", str(csv), "--pred-len", "12",
                               "--seq-len", "24", "--epochs", "1", "--limit-train-batches", "2",
                               "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"], capsys)
    assert code == 0, err
    assert "dlinear on mine (pred_len 12): test MSE" in out


@pytest.mark.parametrize("text, rule", [
    ("70/10/20", "ratio_70_10_20"), ("0.6,0.2,0.2", "ratio_60_20_20"), ("ett-hour", "ett_hour"),
    ("ETT_minute", "ett_minute"), ("ratio_80_10_10", "ratio_80_10_10"),
])
def test_split_rules_as_users_write_them(text, rule):
    assert parse_split_rule(text) == rule


def test_a_ratio_rule_of_70_10_20_is_tslibs():
    assert split_bounds("ratio_70_10_20", 52_696, 96) == {
        "train": (0, 36887), "val": (36887 - 96, 42157), "test": (52696 - 10539 - 96, 52696)}
    assert split_bounds("ratio_60_20_20", 1000, 10) == {"train": (0, 600), "val": (590, 800), "test": (790, 1000)}


def test_a_date_column_of_another_name_is_added_read_and_trained_on(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # timestamps in the middle, as exports from other tools often have them
    csv = write_own_csv(tmp_path / "meter.csv", n_rows=800, date_column="timestamp", date_position=1)
    code, out, err = mixbench("data", "add", "meter", str(csv), "--date-column", "timestamp", "--target", "wind")
    assert code == 0, err
    assert "800 rows, 3 channels, target wind, frequency h, 70/10/20 split, dates in column 'timestamp'" in out
    assert yaml.safe_load(user_registry_path().read_text())["datasets"]["meter"]["date_column"] == "timestamp"
    assert get_dataset("meter").date_column == "timestamp"

    code, out, err = mixbench("data", "info", "meter", "--seq-len", "24", "--pred-len", "12")
    assert code == 0, err
    assert f"file      {csv} (dates in column 'timestamp')" in out
    assert "channels  3 in, 3 out" in out and "train         560" in out
    code, out, _ = mixbench("data", "list")
    assert code == 0 and next(line for line in out.splitlines() if line.startswith("meter")).split()[4] == "timestamp"

    # the channels and dates are those of the same data under TSLib's `date` column
    tslib = write_own_csv(tmp_path / "meter_tslib.csv", n_rows=800)
    added = load_forecast_data(resolve_dataset("meter"), DataProtocol(seq_len=24, pred_len=12, target="wind"))
    direct = load_forecast_data(resolve_dataset(str(tslib)), DataProtocol(seq_len=24, pred_len=12, target="wind"))
    assert added.columns == direct.columns == ("temp", "load", "wind")
    for split in ("train", "val", "test"):
        assert torch.equal(added.splits[split].values, direct.splits[split].values)
        assert torch.equal(added.splits[split].marks, direct.splits[split].marks)

    code, out, err = mixbench("train", "--model", "dlinear", "--dataset", "meter", "--pred-len", "12", "--seq-len",
                              "24", "--epochs", "1", "--limit-train-batches", "2", "--tracking-uri",
                              f"sqlite:///{tmp_path}/mlflow.db")
    assert code == 0, err
    assert "dlinear on meter (pred_len 12): test MSE" in out
    # the added file given by its path keeps its entry, date column included
    assert resolve_dataset(str(csv)).spec.date_column == "timestamp"


@pytest.mark.parametrize("args, fragments", [
    (["--date-column", "when"], ["error: --date-column 'when' is not a column of ",
                                 "(its columns: 'temp', 'timestamp', 'wind', 'load')"]),
    ([], ["has no 'date' column (its columns: 'temp', 'timestamp', 'wind', 'load')", "--date-column COLUMN"]),
    (["--date-column", "wind"], ["column 'wind' of", "not timestamps"]),
])
def test_a_wrong_date_column_is_one_line_and_exit_2(tmp_path, args, fragments):
    csv = write_own_csv(tmp_path / "meter.csv", date_column="timestamp", date_position=1)
    code, out, err = mixbench("data", "add", "meter", str(csv), *args)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert all(fragment in err for fragment in fragments), err
    assert out == "" and not user_registry_path().exists()


def test_a_registry_entry_from_before_date_columns_reads_as_date(tmp_path, capsys):
    csv = write_own_csv(tmp_path / "plant.csv")
    assert run_main(["data", "add", "plant", str(csv)], capsys)[0] == 0
    registry = yaml.safe_load(user_registry_path().read_text())
    del registry["datasets"]["plant"]["date_column"]
    user_registry_path().write_text(yaml.safe_dump(registry))
    assert get_dataset("plant").date_column == "date"
    assert load_forecast_data(resolve_dataset("plant"), DataProtocol(seq_len=24, pred_len=12)).train.num_rows == 420

