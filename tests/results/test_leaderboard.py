"""Leaderboard maths over hand-made records: config choice by validation loss, mean/std over seeds, averages, order."""
from __future__ import annotations

import csv
import io
import statistics

import pytest

from benchmarks.models.registry import model_label
from results.leaderboard import AVG, build_leaderboard, leaderboard_csv, leaderboard_text
from results.runs import BenchmarkRecord


def record(model="dlinear", pred_len=96, seed=0, config="c1", val=1.0, mse=0.5, mae=0.4, dataset="ETTh1",
           label=None, start=0) -> BenchmarkRecord:
    return BenchmarkRecord(dataset=dataset, model=model, label=label or model_label(model), pred_len=pred_len,
                           seed=seed, config_hash=config, best_val_loss=val, test_mse=mse, test_mae=mae,
                           suite="s", run_id=f"{model}-{pred_len}-{seed}-{config}-{start}", start_time=start)


def test_mean_and_sample_std_over_seeds():
    mses, maes = [0.41, 0.44, 0.47], [0.30, 0.33, 0.31]
    board = build_leaderboard([record(seed=s, mse=m, mae=a) for s, (m, a) in enumerate(zip(mses, maes))])
    row = board.get("ETTh1", 96, "DLinear")
    assert row.seeds == 3
    assert row.mse.mean == pytest.approx(statistics.fmean(mses))
    assert row.mse.std == pytest.approx(statistics.stdev(mses))  # ddof=1
    assert row.mae.std == pytest.approx(statistics.stdev(maes))


def test_single_seed_has_no_std():
    row = build_leaderboard([record()]).get("ETTh1", 96, "DLinear")
    assert row.mse.std is None and row.mse.mean == 0.5


def test_config_is_chosen_by_validation_loss_never_by_test():
    records = [
        record(config="good-val", seed=0, val=0.50, mse=0.90),
        record(config="good-val", seed=1, val=0.60, mse=0.80),
        record(config="good-test", seed=0, val=0.70, mse=0.10),
        record(config="good-test", seed=1, val=0.50, mse=0.10),
    ]
    row = build_leaderboard(records).get("ETTh1", 96, "DLinear")
    assert row.config_hash == "good-val"
    assert row.mse.mean == pytest.approx(0.85)
    assert row.best_val_loss == pytest.approx(0.55)


def test_validation_tie_picks_the_smaller_config_hash():
    records = [record(config="bbb", val=0.5, mse=0.1), record(config="aaa", val=0.5, mse=0.9)]
    assert build_leaderboard(records).get("ETTh1", 96, "DLinear").config_hash == "aaa"


def test_a_seed_run_twice_counts_once_with_its_latest_run():
    records = [record(seed=0, mse=0.9, start=1), record(seed=0, mse=0.3, start=2), record(seed=1, mse=0.5, start=1)]
    row = build_leaderboard(records).get("ETTh1", 96, "DLinear")
    assert row.seeds == 2
    assert row.mse.mean == pytest.approx(0.4)


def test_average_over_horizons_only_for_complete_columns():
    records = [
        record("dlinear", 96, mse=0.4, mae=0.3), record("dlinear", 192, mse=0.6, mae=0.5),
        record("patchtst", 96, mse=0.2, mae=0.1),
    ]
    board = build_leaderboard(records)
    average = board.get("ETTh1", AVG, "DLinear")
    assert average.mse.mean == pytest.approx(0.5) and average.mae.mean == pytest.approx(0.4)
    assert board.get("ETTh1", AVG, "PatchTST") is None
    assert board.horizons("ETTh1") == [96, 192]


def test_average_std_is_the_mean_of_per_horizon_stds():
    records = [
        record(pred_len=96, seed=0, mse=0.4), record(pred_len=96, seed=1, mse=0.6),
        record(pred_len=192, seed=0, mse=0.5), record(pred_len=192, seed=1, mse=0.5),
    ]
    average = build_leaderboard(records).get("ETTh1", AVG, "DLinear")
    assert average.mse.std == pytest.approx((statistics.stdev([0.4, 0.6]) + 0.0) / 2)


def test_column_and_dataset_order():
    records = [
        record("zeta"), record("dlinear"), record("patchtst"), record("mixmamba"),
        record("mixmamba", label="MixMamba (searched)"), record("itransformer"),
        record("dlinear", dataset="weather"), record("dlinear", dataset="aaa_custom"),
    ]
    board = build_leaderboard(records)
    assert board.labels() == ["MixMamba", "MixMamba (searched)", "iTransformer", "PatchTST", "DLinear", "zeta"]
    assert board.datasets() == ["ETTh1", "weather", "aaa_custom"]


def test_display_names_are_separate_columns():
    records = [record("mixmamba", mse=0.4), record("mixmamba", label="MixMamba (searched)", mse=0.3)]
    board = build_leaderboard(records)
    assert board.get("ETTh1", 96, "MixMamba").mse.mean == 0.4
    assert board.get("ETTh1", 96, "MixMamba (searched)").mse.mean == 0.3


def test_csv_carries_full_precision_numbers():
    records = [record(seed=0, mse=0.123456789), record(seed=1, mse=0.2)]
    rows = list(csv.DictReader(io.StringIO(leaderboard_csv(build_leaderboard(records)))))
    assert [(row["horizon"], row["label"]) for row in rows] == [("96", "DLinear"), (AVG, "DLinear")]
    assert float(rows[0]["mse_mean"]) == pytest.approx((0.123456789 + 0.2) / 2, abs=1e-15)
    assert float(rows[0]["mse_std"]) == pytest.approx(statistics.stdev([0.123456789, 0.2]), abs=1e-15)


def test_text_table_lists_every_row():
    text = leaderboard_text(build_leaderboard([record(seed=0, mse=0.4), record(seed=1, mse=0.6)], suite="nightly"))
    assert "suite: nightly" in text
    assert "0.5000 ± 0.1414" in text
