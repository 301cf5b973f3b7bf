"""results/official's comparison of the official MixMamba code with ours is what `official_compare table` rebuilds from
the committed runs, and every score in it was computed on a whole test set."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.speed.official_compare import build_table

OFFICIAL = Path(__file__).resolve().parents[2] / "results" / "official"
RUNS = json.loads((OFFICIAL / "runs.json").read_text())


def test_committed_comparison_rebuilds_from_the_committed_runs(tmp_path: Path) -> None:
    for name, run in RUNS.items():
        (tmp_path / "runs" / f"{name}.json").parent.mkdir(exist_ok=True)
        (tmp_path / "runs" / f"{name}.json").write_text(json.dumps(run))
    build_table(sorted((tmp_path / "runs").glob("*.json")), tmp_path / "out")
    for name in ("comparison.csv", "comparison.json"):
        assert (tmp_path / "out" / name).read_text() == (OFFICIAL / name).read_text(), name


@pytest.mark.parametrize("name", [name for name, run in RUNS.items() if run.get("test_windows") is not None])
def test_every_recorded_test_covers_all_windows_of_its_test_set(name: str) -> None:
    run = RUNS[name]
    assert run.get("completed", True) and not run.get("cut")
    whole = {(r["dataset"], r["pred_len"]): r["test_windows_total"] for r in RUNS.values() if r.get("test_windows_total")}
    assert run["test_windows"] == whole[(run["dataset"], run["pred_len"])]


def test_the_official_weather_run_is_in_the_summary_with_its_one_seed() -> None:
    summary = json.loads((OFFICIAL / "comparison.json").read_text())["summary"]
    official = summary["weather/96/official/without causal_conv1d"]
    assert official["seeds"] == [2023]
    assert official["test_mse_mean"] == pytest.approx(0.18241, abs=1e-5)
    ours = summary["weather/96/ours/fp32, session 9 (beside three official runs)"]
    assert ours["seeds"] == [2021, 2022, 2023]
