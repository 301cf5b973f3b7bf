"""`mixbench table --reference paper --std` a paper can use: four models fit an A4/letter landscape page at 8 pt or
more (nothing scaled, nothing overfull), six go over two such pages, and the Markdown stays under 160 characters wide."""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from results.leaderboard import build_leaderboard
from results.render import render_latex, render_markdown
from results.runs import BenchmarkRecord
from results.table import build_table

MODELS = ("mixmamba", "itransformer", "patchtst", "dlinear")


def _table(columns):
    columns = list(columns)
    records = [BenchmarkRecord(dataset=dataset, model=model, label=label, pred_len=horizon, seed=seed,
                               config_hash="c", best_val_loss=1.0, test_mse=0.3 + 0.01 * seed + 0.001 * horizon / 96,
                               test_mae=0.3 + 0.02 * seed)
               for dataset in ("ETTh1", "weather") for model, label in columns
               for horizon in (96, 192, 336, 720) for seed in (0, 1, 2)]
    return build_table(build_leaderboard(records, suite="paper"), reference="paper")


@pytest.fixture
def four_models():
    return _table(zip(MODELS, ("MixMamba", "iTransformer", "PatchTST", "DLinear")))


@pytest.fixture
def six_columns():
    """The committed table's columns: MixMamba three ways (the longest label stacked over three lines)."""
    return _table([("mixmamba", "MixMamba"), ("mixmamba", "MixMamba (searched)"),
                   ("mixmamba", "MixMamba (searched, lookback 96-512)"), *zip(MODELS[1:], (
                       "iTransformer", "PatchTST", "DLinear"))])


def test_markdown_is_under_160_characters_wide(four_models):
    text = render_markdown(four_models, show_std=True)
    assert max(len(line) for line in text.splitlines()) < 160
    assert text.count("| | paper | <sub>") == 2 * 2 * 5  # per metric table, per dataset, 4 horizons + Avg


def test_latex_is_landscape_at_8pt_or_more_and_never_scaled(four_models):
    latex = render_latex(four_models, show_std=True)
    assert "landscape" in latex and r"\resizebox" not in latex and r"\scriptsize" not in latex
    assert r"\small" in latex and r"\footnotesize" in latex  # 9 pt ours, 8 pt published (article, 10 pt base)


def test_six_columns_go_over_two_tables_of_three_each_ranked_over_all_six(six_columns):
    latex = render_latex(six_columns, show_std=True)
    assert latex.count(r"\begin{table}") == 2 and latex.count(r"\clearpage") == 1
    assert r"\resizebox" not in latex and r"\scriptsize" not in latex
    assert "Part 1 of 2" in latex and "Part 2 of 2; bold and underline rank all 6 columns" in latex
    first, second = latex.split(r"\clearpage")
    assert "lookback 96-512)" in first and "DLinear" in second and "DLinear" not in first
    assert first.count(r"\multicolumn{2}{c}{") - 3 == 3 == second.count(r"\multicolumn{2}{c}{") - 3


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed (CI installs it)")
@pytest.mark.parametrize("columns", ["four_models", "six_columns"])
@pytest.mark.parametrize("paper", ["a4paper", "letterpaper"])
def test_latex_compiles_without_overfull_boxes_on_a4_and_letter(columns, request, tmp_path, paper):
    latex = render_latex(request.getfixturevalue(columns), show_std=True).replace("a4paper", paper)
    (tmp_path / "table.tex").write_text(latex)
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "table.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:]
    log = (tmp_path / "table.log").read_text()
    assert not re.search(r"Overfull \\hbox", log), log[-2000:]
