"""The scaling benchmark (issue 23) on CPU with Ray's simulated GPUs: each count runs in its own process, the search's
placement is read back from MLflow, and the JSON carries throughput, efficiency and the benchmark grid's wall time."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.speed.scaling import efficiencies, main, wall_efficiencies
from tests.search.test_search import TINY_SPACE


def test_efficiency_is_throughput_over_n_times_the_one_gpu_throughput() -> None:
    rows = [{"gpus": 1, "trials_per_hour": 100.0}, {"gpus": 2, "trials_per_hour": 180.0},
            {"gpus": 4, "trials_per_hour": 340.0}]
    assert efficiencies(rows, "trials_per_hour") == {"1": 1.0, "2": 0.9, "4": 0.85}
    assert efficiencies(rows[1:], "trials_per_hour") == {}  # no one-GPU run to compare with


def test_grid_efficiency_is_the_speedup_over_n() -> None:
    rows = [{"gpus": 1, "wall_seconds": 400.0}, {"gpus": 2, "wall_seconds": 250.0}]
    assert wall_efficiencies(rows) == {"1": 1.0, "2": 0.8}


@pytest.mark.slow
def test_a_search_and_a_grid_on_one_and_two_simulated_gpus(shared_data_dir: Path, tmp_path: Path) -> None:
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_SPACE.replace("1.0e+30", "0.003"))  # no diverging trial here
    out = tmp_path / "scaling.json"
    args = ["--simulated-gpus", "--gpus", "1,2", "--dataset", "ETTh1", "--space", str(space), "--trials", "4",
            "--epochs", "1", "--fuse", "2", "--limit-train-batches", "2", "--limit-eval-batches", "1",
            "--benchmark-datasets", "ETTh1", "--benchmark-models", "dlinear", "--benchmark-horizons", "96",
            "--benchmark-seeds", "2", "--data-dir", str(shared_data_dir), "--workdir", str(tmp_path / "work"),
            "--out", str(out)]
    assert main(args) == 0
    report = json.loads(out.read_text())
    search = report["search"]
    assert [row["gpus"] for row in search["runs"]] == [1, 2]
    for row in search["runs"]:
        placement = row["placement"]
        assert row["trials_failed"] == 0 and row["trials_finished"] + row["trials_stopped_early"] == 4
        assert placement["trial_runs"] == 4 and placement["groups"] == 2 and placement["confined"]
        assert set(placement["runs_per_gpu"]) <= {str(gpu) for gpu in range(row["gpus"])}
    assert search["all_confined_and_no_failure"]
    assert set(search["efficiency_trials_per_hour"]) == {"1", "2"}
    grid = report["benchmark"]
    assert [(row["runs_logged"], row["cells_failed"]) for row in grid["runs"]] == [(2, []), (2, [])]
    assert grid["efficiency_wall"]["1"] == 1.0

    # A later call for one count (a device call too short for all) keeps the other counts' rows and parts.
    assert main([*args[:2], "2", *args[3:], "--parts", "benchmark"]) == 0
    again = json.loads(out.read_text())
    assert again["search"] == search
    assert [row["gpus"] for row in again["benchmark"]["runs"]] == [1, 2]
    assert again["benchmark"]["runs"][0] == grid["runs"][0] and again["benchmark"]["runs"][1] != grid["runs"][1]
