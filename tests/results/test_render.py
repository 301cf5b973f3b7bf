"""LaTeX, Markdown and CSV renderings of hand-made tables: missing cells, marks, std, escaping, compilation."""
from __future__ import annotations

import csv
import io
import shutil
import subprocess

import pytest

from benchmarks.errors import SettingError
from benchmarks.models.registry import model_label
from results.leaderboard import build_leaderboard
from results.render import render, render_csv, render_latex, render_markdown
from results.runs import BenchmarkRecord
from results.table import build_table


def record(model, pred_len, mse, mae, seed=0, dataset="exchange_rate", label=None) -> BenchmarkRecord:
    return BenchmarkRecord(dataset=dataset, model=model, label=label or model_label(model), pred_len=pred_len,
                           seed=seed, config_hash="c", best_val_loss=1.0, test_mse=mse, test_mae=mae)


@pytest.fixture
def partial_table():
    """exchange_rate: MixMamba (searched) misses 192; ETTh1: DLinear alone, two seeds."""
    records = [
        record("dlinear", 96, 0.1, 0.2), record("dlinear", 192, 0.3, 0.4),
        record("mixmamba", 96, 0.05, 0.25, label="MixMamba (searched)"),
        record("dlinear", 96, 0.40, 0.30, seed=0, dataset="ETTh1"),
        record("dlinear", 96, 0.44, 0.34, seed=1, dataset="ETTh1"),
    ]
    return build_table(build_leaderboard(records, suite="nightly_v2"), reference="paper")


def test_markdown_marks_missing_cells_and_first_count(partial_table):
    lines = render_markdown(partial_table).splitlines()
    assert lines[3] == "**MSE**"
    assert lines[5] == "| Dataset | Horizon | MixMamba (searched) | DLinear |"
    assert lines[7] == "| ETTh1 | 96 | -- | **0.420** |"
    assert lines[8] == "| | paper | <sub>0.374</sub> | <sub>0.386 (+8.8%)</sub> |"  # published under ours, + difference
    assert lines[11] == "| exchange_rate | 96 | **0.050** | <u>0.100</u> |"
    assert lines[13].startswith("| exchange_rate | 192 | -- | **0.300** |")
    assert "| 1st Count |  | 1 | 4 |" in lines and lines[-1] == "| 1st Count |  | 0 | 5 |"
    mae = lines.index("**MAE**")
    assert lines[mae + 4] == "| ETTh1 | 96 | -- | **0.320** |"
    assert lines[mae + 5] == "| | paper | <sub>0.389</sub> | <sub>0.400 (-20.0%)</sub> |"


def test_csv_leaves_missing_cells_empty_and_shows_std(partial_table):
    rows = list(csv.DictReader(io.StringIO(render_csv(partial_table, show_std=True))))
    etth1 = rows[0]
    assert etth1["DLinear MSE"] == f"0.420±{0.028284271:.3f}"
    assert etth1["MixMamba (searched) MSE"] == "" and etth1["MixMamba (searched) vs paper MSE %"] == ""
    assert rows[-1]["dataset"] == "1st Count" and rows[-1]["DLinear MAE"] == "5"


def test_latex_escapes_names_and_uses_multirow_groups(partial_table):
    latex = render_latex(partial_table, show_std=True)
    assert r"\multirow{6}{*}{exchange\_rate}" in latex and r"\multirow{4}{*}{ETTh1}" in latex  # ours + paper rows
    assert r"suite \texttt{nightly\_v2}" in latex
    assert r"\textbf{0.420$\pm$0.028}" in latex and r"\underline{0.250}" in latex
    assert r"\footnotesize 0.386 (+8.8\%)" in latex and r"\toprule" in latex and r"\bottomrule" in latex
    assert r"\footnotesize 0.374 &" in latex  # published numbers are the registry model's, even with ours missing


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed (CI installs it)")
def test_latex_with_missing_cells_compiles(partial_table, tmp_path):
    (tmp_path / "table.tex").write_text(render_latex(partial_table, show_std=True))
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "table.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:]
    assert (tmp_path / "table.pdf").stat().st_size > 1000


def test_unknown_format_is_a_setting_error(partial_table):
    with pytest.raises(SettingError, match="format must be one of: latex, markdown, csv") as refused:
        render(partial_table, "html")
    assert refused.value.setting == "format"
