"""The committed tables under results/paper are exactly what `mixbench table` rebuilds from the committed export."""
from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

import cli
from benchmarks.grid.configs import load_config_file

PAPER = Path(__file__).resolve().parents[2] / "results" / "paper"


def mixbench(*args: str) -> str:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            cli.main(list(args))
        except SystemExit as done:
            assert not done.code, err.getvalue()
    return out.getvalue()


@pytest.mark.parametrize("output_format, name",
                         [("latex", "table.tex"), ("markdown", "table.md"), ("csv", "table.csv")])
def test_committed_tables_rebuild_from_the_export(output_format, name):
    rebuilt = mixbench("table", "--runs", str(PAPER / "runs.csv"), "--format", output_format, "--reference", "paper",
                       "--std")
    assert rebuilt == (PAPER / name).read_text()


def test_committed_leaderboard_rebuilds_from_the_export():
    rebuilt = mixbench("leaderboard", "--runs", str(PAPER / "runs.csv"), "--format", "csv")
    assert rebuilt == (PAPER / "leaderboard.csv").read_text()
    # header + (4 horizons + Avg) x the columns of models: ETTh1 has the lookback-searched column, weather does not
    assert rebuilt.count("\n") == 1 + 5 * 6 + 5 * 5


def test_searched_configs_cover_every_cell_and_are_labelled():
    entries = load_config_file(PAPER / "searched_configs.yaml")
    at_96 = [entry for entry in entries if entry.display_name == "MixMamba (searched)"]
    assert sorted((entry.dataset, entry.pred_len) for entry in at_96) == sorted(
        (dataset, horizon) for dataset in ("weather", "ETTh1") for horizon in (96, 192, 336, 720))
    assert {entry.seq_len for entry in at_96} == {96}
    lookbacks = [entry for entry in entries if entry not in at_96]
    assert {entry.display_name for entry in lookbacks} == {"MixMamba (searched, lookback 96-512)"}
    assert sorted(entry.pred_len for entry in lookbacks) == [96, 192, 336, 720]
    assert {entry.dataset for entry in lookbacks} == {"ETTh1"}
    assert {entry.model for entry in entries} == {"mixmamba"}


def test_committed_search_round_summary_rebuilds_from_its_exports(tmp_path):
    from results import search_rounds

    round3 = PAPER / "search_round3"
    exports = sorted(round3.glob("*.csv"))
    # ETTh1 at lookback 96 and searched, 4 horizons each; weather at lookback 96, 4 horizons, and weather-96 twice
    assert len(exports) == 13
    search_rounds.main([*map(str, exports), "--output", str(tmp_path)])
    for name in ("summary.md", "summary.json"):
        assert (tmp_path / name).read_text() == (round3 / name).read_text()
    summaries = json.loads((round3 / "summary.json").read_text())
    # every search started from the recipe (the first configuration) and trained each configuration with 3 seeds
    assert all(entry["recipe"]["trial_id"].endswith("_0") for entry in summaries)
    # every search refit its choice with 3 seeds but session 7's weather-96, whose call ended first
    assert [entry["export"] for entry in summaries if entry["chosen_refit"]["runs"] is None] == ["weather-L96-pred96.csv"]
    assert {entry["chosen_refit"]["runs"] for entry in summaries} == {3.0, None}
