"""Runs whose test pass was capped (--limit-eval-batches) are left out of leaderboards and tables, with a note; with
--include-capped they come back as their own, marked columns."""
from __future__ import annotations

import csv
from pathlib import Path

from tests.cli_runner import mixbench

PAPER_RUNS = Path(__file__).resolve().parents[2] / "results" / "paper" / "runs.csv"


def with_capped_dlinear(tmp_path: Path, tag: bool) -> Path:
    """The committed export with a capped DLinear weather-96 run added (by its tag, or as an older run by its
    train.limit_eval_batches param); its test MSE is absurdly low, as a 5-batch test may be."""
    with PAPER_RUNS.open(newline="") as handle:
        reader = csv.DictReader(handle)
        fields, rows = list(reader.fieldnames), list(reader)
    source = next(row for row in rows if row["tags.mixbench.kind"] == "benchmark" and row["tags.model"] == "dlinear"
                  and row["tags.dataset"] == "weather" and row["tags.pred_len"] == "96" and not
                  row["tags.display_name"])
    capped = {**source, "run_id": "capped", "start_time": str(int(source["start_time"]) + 1),
              "metrics.test_mse": "0.01", "tags.seed": "9"}
    if tag:
        fields += ["tags.test_complete", "tags.test_windows"]
        capped.update({"tags.test_complete": "false", "tags.test_windows": "160/10444"})
    else:
        capped["params.train.limit_eval_batches"] = "5"
    path = tmp_path / "runs.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, lineterminator="\n", restval="")
        writer.writeheader()
        writer.writerows([*rows, capped])
    return path


def test_capped_runs_are_left_out_with_a_note(tmp_path):
    for tag in (True, False):
        runs = with_capped_dlinear(tmp_path, tag)
        code, out, err = mixbench("leaderboard", "--runs", str(runs), "--format", "csv")
        assert code == 0, err
        assert out == (PAPER_RUNS.parent / "leaderboard.csv").read_text()  # as if the capped run did not exist
        assert "left out 1 run(s) whose test was capped" in err and "--include-capped" in err


def test_include_capped_shows_them_as_marked_columns(tmp_path):
    runs = with_capped_dlinear(tmp_path, True)
    code, out, err = mixbench("table", "--runs", str(runs), "--format", "markdown", "--include-capped")
    assert code == 0, err
    assert "| DLinear [capped test] MSE |" in out and "0.010" in out
    code, out, _ = mixbench("leaderboard", "--runs", str(runs), "--include-capped")
    assert "DLinear [capped test]" in out
