"""The paper-layout table over hand-made records: marks, ties, 1st Count, paper reference and relative differences."""
from __future__ import annotations

import pytest

from benchmarks.errors import SettingError
from benchmarks.models.registry import model_label
from results.leaderboard import AVG, build_leaderboard
from results.paper import paper_results, published
from results.runs import BenchmarkRecord
from results.table import FIRST, SECOND, build_table, mark_row


def record(model, pred_len, mse, mae, seed=0, dataset="ETTh1") -> BenchmarkRecord:
    return BenchmarkRecord(dataset=dataset, model=model, label=model_label(model), pred_len=pred_len, seed=seed,
                           config_hash="c", best_val_loss=1.0, test_mse=mse, test_mae=mae)


def test_marks_best_and_second():
    assert mark_row({"a": 0.3, "b": 0.1, "c": 0.2, "d": 0.4}) == {"a": "", "b": FIRST, "c": SECOND, "d": ""}


def test_ties_share_a_mark_and_second_is_the_next_distinct_value():
    assert mark_row({"a": 0.1, "b": 0.1, "c": 0.2, "d": 0.2, "e": 0.3}) == {
        "a": FIRST, "b": FIRST, "c": SECOND, "d": SECOND, "e": ""}


def test_ties_are_judged_on_displayed_values():
    # 0.4121 and 0.4124 both read 0.412: both bold; 0.4126 reads 0.413: second.
    assert mark_row({"a": 0.4124, "b": 0.4121, "c": 0.4126}) == {"a": FIRST, "b": FIRST, "c": SECOND}


def test_all_tied_means_no_second_and_missing_cells_take_no_part():
    assert mark_row({"a": 0.2, "b": 0.2, "c": None}) == {"a": FIRST, "b": FIRST, "c": ""}
    assert mark_row({"a": None, "b": 0.7}) == {"a": "", "b": FIRST}


def test_table_marks_and_first_count_include_the_avg_rows():
    records = [
        record("dlinear", 96, 0.40, 0.30), record("patchtst", 96, 0.50, 0.20), record("mixmamba", 96, 0.45, 0.25),
        record("dlinear", 192, 0.60, 0.50), record("patchtst", 192, 0.55, 0.45), record("mixmamba", 192, 0.70, 0.40),
    ]
    table = build_table(build_leaderboard(records))
    assert table.labels == ["MixMamba", "PatchTST", "DLinear"]
    assert [row.horizon for row in table.rows] == [96, 192, AVG]
    marks = {(row.horizon, label, metric): cell.mark
             for row in table.rows for (label, metric), cell in row.cells.items()}
    assert marks[(96, "DLinear", "mse")] == FIRST and marks[(96, "MixMamba", "mse")] == SECOND
    assert marks[(192, "PatchTST", "mse")] == FIRST and marks[(192, "DLinear", "mse")] == SECOND
    # Avg MSE: MixMamba 0.575, PatchTST 0.525, DLinear 0.5
    assert marks[(AVG, "DLinear", "mse")] == FIRST and marks[(AVG, "PatchTST", "mse")] == SECOND
    # Avg MAE: MixMamba 0.325, PatchTST 0.325 (tie), DLinear 0.4
    assert marks[(AVG, "MixMamba", "mae")] == FIRST and marks[(AVG, "PatchTST", "mae")] == FIRST
    assert marks[(AVG, "DLinear", "mae")] == SECOND
    assert table.first_count == {
        ("MixMamba", "mse"): 0, ("MixMamba", "mae"): 2,
        ("PatchTST", "mse"): 1, ("PatchTST", "mae"): 2,
        ("DLinear", "mse"): 2, ("DLinear", "mae"): 0,
    }


def test_missing_cells_are_empty_and_unmarked():
    records = [record("dlinear", 96, 0.4, 0.3), record("dlinear", 192, 0.5, 0.4), record("patchtst", 96, 0.3, 0.2)]
    table = build_table(build_leaderboard(records))
    row_192 = table.rows[1]
    assert row_192.cells[("PatchTST", "mse")].mean is None and row_192.cells[("PatchTST", "mse")].mark == ""
    assert row_192.cells[("DLinear", "mse")].mark == FIRST
    assert table.rows[2].cells[("PatchTST", "mae")].mean is None  # no Avg without every horizon


def test_relative_difference_against_the_paper():
    # Paper, ETTh1 DLinear: 96 -> (0.386, 0.400), 192 -> (0.437, 0.432).
    records = [record("dlinear", 96, 0.40, 0.38), record("dlinear", 192, 0.437, 0.45)]
    table = build_table(build_leaderboard(records), reference="paper")
    assert table.reference_labels == ["DLinear"]
    refs = {(row.horizon, metric): row.references[("DLinear", metric)]
            for row in table.rows for metric in ("mse", "mae")}
    assert refs[(96, "mse")].paper == 0.386
    assert refs[(96, "mse")].difference == pytest.approx((0.40 - 0.386) / 0.386 * 100)
    assert refs[(96, "mae")].difference == pytest.approx(-5.0)
    assert refs[(192, "mse")].difference == pytest.approx(0.0, abs=1e-9)
    # Our Avg covers 96 and 192 only, so the paper's side is the mean of its 96 and 192 numbers, not its Avg row.
    assert refs[(AVG, "mse")].paper == pytest.approx((0.386 + 0.437) / 2)
    assert refs[(AVG, "mae")].difference == pytest.approx(((0.38 + 0.45) / 2 - 0.416) / 0.416 * 100)


def test_avg_over_the_four_paper_horizons_uses_the_published_avg_row():
    assert published("ETTh1", AVG, "mixmamba", [96, 192, 336, 720]).mae == 0.428
    assert published("ETTh1", AVG, "mixmamba", [96, 192]).mae == pytest.approx((0.389 + 0.417) / 2)
    assert published("ETTh1", AVG, "timesnet", [96, 192, 336, 720]).mse == 0.458


def test_reference_needs_published_numbers_and_a_difference_needs_ours():
    records = [record("zeta", 96, 0.4, 0.3), record("dlinear", 96, 0.4, 0.3, dataset="custom")]
    table = build_table(build_leaderboard(records), reference="paper")
    assert table.reference_labels == ["DLinear"]  # zeta has no published numbers
    etth1 = next(row for row in table.rows if row.dataset == "ETTh1" and row.horizon == 96)
    assert etth1.references[("DLinear", "mse")].paper == 0.386  # published, though our DLinear cell is missing
    assert etth1.references[("DLinear", "mse")].difference is None
    custom = [row for row in table.rows if row.dataset == "custom"]
    assert all(ref.paper is None and ref.difference is None for row in custom for ref in row.references.values())


def test_paper_csv_uses_registry_names():
    results = paper_results()
    datasets = {dataset for dataset, _, _ in results}
    assert datasets == {"ETTh1", "ETTh2", "ETTm1", "ETTm2", "exchange_rate", "weather", "electricity"}
    assert {model for _, _, model in results} == {"mixmamba", "itransformer", "patchtst", "dlinear", "timesnet"}
    assert results[("weather", 720, "dlinear")].mse == 0.345
    assert results[("electricity", AVG, "itransformer")].mae == 0.270
    assert len(results) == 130


def test_unknown_reference_is_a_setting_error():
    with pytest.raises(SettingError, match="reference must be one of: paper") as refused:
        build_table(build_leaderboard([record("dlinear", 96, 0.4, 0.3)]), reference="arxiv")
    assert refused.value.setting == "reference"
