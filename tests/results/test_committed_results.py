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
    assert rebuilt.count("\n") == 1 + 2 * 5 * 5  # header + 2 datasets x (4 horizons + Avg) x 5 columns of models


def test_searched_configs_cover_every_cell_and_are_labelled():
    entries = load_config_file(PAPER / "searched_configs.yaml")
    assert {(entry.dataset, entry.pred_len) for entry in entries} == {
        (dataset, horizon) for dataset in ("weather", "ETTh1") for horizon in (96, 192, 336, 720)}
    assert {entry.model for entry in entries} == {"mixmamba"}
    assert {entry.display_name for entry in entries} == {"MixMamba (searched)"}


def test_committed_search_round_summary_rebuilds_from_its_exports(tmp_path):
    from results import search_rounds

    round3 = PAPER / "search_round3"
    exports = sorted(round3.glob("*.csv"))
    assert len(exports) == 9  # ETTh1 at lookback 96 and searched, 4 horizons each; weather-96 cut by its budget
    search_rounds.main([*map(str, exports), "--output", str(tmp_path)])
    for name in ("summary.md", "summary.json"):
        assert (tmp_path / name).read_text() == (round3 / name).read_text()
    summaries = json.loads((round3 / "summary.json").read_text())
    # every search started from the recipe (the first configuration) and trained each configuration with 3 seeds
    assert all(entry["recipe"]["trial_id"].endswith("_0") for entry in summaries)
    assert [entry["chosen_refit"]["runs"] for entry in summaries] == [3.0] * 8 + [None]
