"""`mixbench leaderboard`, `mixbench table` and `mixbench export`: the click commands of the results package.

The results modules load when a command runs, not to build its --help: with torch (the model registry's display
names), MLflow (the tracking store) and matplotlib they take about 2 s to import, this module 0.02 s.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from benchmarks.errors import ResultsError

if TYPE_CHECKING:
    from results.leaderboard import Leaderboard

_CONTEXT = {"help_option_names": ["-h", "--help"]}
_TRACKING_HELP = "MLflow store or server (default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db)."


def _write(text: str, output: Path | None) -> None:
    if output is None:
        click.echo(text, nl=False)
        return
    from results.output import write_atomic

    write_atomic(output, text)
    click.echo(f"wrote {output}", err=True)


def _leaderboard(tracking_uri: str | None, experiment: str, suite: str | None, dataset: str | None,
                 runs: str | None, include_capped: bool) -> Leaderboard:
    from results.leaderboard import build_leaderboard
    from results.runs import load_benchmark_records, load_export_records

    if runs is not None:
        suite, records = load_export_records(Path(runs), suite, dataset)
    else:
        # MLflow loads only when the runs come from a store: `--runs FILE` rebuilds the tables without it.
        from benchmarks.tracking.store import TrackingStore

        suite, records = load_benchmark_records(TrackingStore.resolve(tracking_uri), experiment, suite, dataset)
    capped = [record for record in records if not record.test_complete]
    if capped and not include_capped:
        records = [record for record in records if record.test_complete]
        click.echo(f"note: left out {len(capped)} run(s) whose test was capped (--limit-eval-batches): smoke numbers, "
                   "not results; --include-capped shows them as separate '[capped test]' columns", err=True)
        if not records:
            raise ResultsError(f"every run of suite '{suite}' has a capped test; re-run it without "
                               "--limit-eval-batches, or pass --include-capped to see them marked")
    return build_leaderboard(records, suite)


_RUNS_HELP = "Read the runs from a `mixbench export` CSV instead of MLflow."
_OUTPUT_HELP = "Write to this file instead of stdout (written atomically; an existing file needs --force)."
_FORCE_HELP = "Replace existing output files (a symlink is replaced as a link, never written through)."
_CAPPED_HELP = ("Also show runs whose test was capped by --limit-eval-batches, as separate '[capped test]' columns "
                "(left out by default: they are smoke numbers).")


@click.command("leaderboard", context_settings=_CONTEXT)
@click.option("--suite", default=None, help="Benchmark suite (default: the most recently run one).")
@click.option("--dataset", default=None, help="Only this dataset.")
@click.option("--format", "output_format", type=click.Choice(["table", "csv"]), default="table", show_default=True)
@click.option("--output", default=None, help=_OUTPUT_HELP)
@click.option("--force", is_flag=True, help=_FORCE_HELP)
@click.option("--include-capped", is_flag=True, help=_CAPPED_HELP)
@click.option("--runs", default=None, metavar="FILE", help=_RUNS_HELP)
@click.option("--tracking-uri", default=None, help=_TRACKING_HELP)
@click.option("--experiment", default="mixbench", show_default=True, help="MLflow experiment name.")
def leaderboard(suite: str | None, dataset: str | None, output_format: str, output: str | None, force: bool,
                include_capped: bool, runs: str | None, tracking_uri: str | None, experiment: str) -> None:
    """Test MSE/MAE per (dataset, horizon, model): mean ± sample std (ddof=1) over seeds, plus the Avg over horizons.

    Where a cell has several configs, the one with the lowest mean best_val_loss is reported (never chosen by test).

    \b
    Examples:
      mixbench leaderboard                                  # the latest suite in ./mlflow.db
      mixbench leaderboard --suite paper --format csv --output leaderboard.csv --force
      mixbench leaderboard --runs results/paper/runs.csv --dataset weather
    """
    from results.leaderboard import leaderboard_csv, leaderboard_text
    from results.output import check_output_file

    path = None if output is None else check_output_file(output, force)
    board = _leaderboard(tracking_uri, experiment, suite, dataset, runs, include_capped)
    _write(leaderboard_csv(board) if output_format == "csv" else leaderboard_text(board), path)


@click.command("table", context_settings=_CONTEXT)
@click.option("--format", "output_format", type=click.Choice(["latex", "markdown", "csv"]), default="latex",
              show_default=True, help="latex: a complete pdflatex document (booktabs).")
@click.option("--output", default=None, help=_OUTPUT_HELP)
@click.option("--force", is_flag=True, help=_FORCE_HELP)
@click.option("--include-capped", is_flag=True, help=_CAPPED_HELP)
@click.option("--suite", default=None, help="Benchmark suite (default: the most recently run one).")
@click.option("--dataset", default=None, help="Only this dataset.")
@click.option("--reference", type=click.Choice(["paper"]), default=None,
              help="Add the MixMamba paper's published numbers under ours, in smaller type, with our relative "
                   "difference (ours-paper)/paper in % (Markdown: one table per metric, a 'paper' row under each).")
@click.option("--std", "show_std", is_flag=True, help="Show mean ± sample std over seeds.")
@click.option("--figures", default=None, metavar="DIR",
              help="Also write one PNG per dataset into DIR: test MSE by horizon, a line per model, error bars = std.")
@click.option("--runs", default=None, metavar="FILE", help=_RUNS_HELP)
@click.option("--tracking-uri", default=None, help=_TRACKING_HELP)
@click.option("--experiment", default="mixbench", show_default=True, help="MLflow experiment name.")
def table(output_format: str, output: str | None, force: bool, include_capped: bool, suite: str | None,
          dataset: str | None, reference: str | None, show_std: bool, figures: str | None, runs: str | None,
          tracking_uri: str | None, experiment: str) -> None:
    """The long-term forecasting table in the MixMamba paper's layout, from the leaderboard.

    Datasets are row groups (horizons, then Avg), models column pairs (MSE, MAE): MixMamba, iTransformer, PatchTST,
    DLinear, then others. Per row and metric the best is bold and the second underlined, compared as displayed (3
    decimals): ties share the mark, second is the next distinct value; 1st Count counts bold cells over all rows,
    Avg included. Missing cells show "--" (empty in CSV).

    \b
    Examples:
      mixbench table --format markdown                      # the latest suite in ./mlflow.db
      mixbench table --format latex --reference paper --std --output table.tex --figures figures/
      mixbench table --runs results/paper/runs.csv --format markdown --reference paper
    """
    from results.figures import figure_path, write_figures
    from results.output import check_output_file, check_output_folder
    from results.render import render
    from results.table import build_table

    path = None if output is None else check_output_file(output, force)
    board = _leaderboard(tracking_uri, experiment, suite, dataset, runs, include_capped)
    folder = None
    if figures is not None:
        names = [figure_path(Path(figures), name).name for name in board.datasets()]
        folder = check_output_folder(figures, force, names, "--figures")
    _write(render(build_table(board, reference), output_format, show_std), path)
    if folder is not None:
        for written in write_figures(board, folder):
            click.echo(f"wrote {written}", err=True)


@click.command("export", context_settings=_CONTEXT)
@click.option("--suite", default=None, help="Benchmark suite to export (or --searches).")
@click.option("--searches", is_flag=True, help="Export every search of the experiment, with its trials and refits, "
                                               "instead of a suite.")
@click.option("--output", required=True, help="CSV file to write (atomically; an existing file needs --force).")
@click.option("--force", is_flag=True, help=_FORCE_HELP)
@click.option("--tracking-uri", default=None, help=_TRACKING_HELP)
@click.option("--experiment", default="mixbench", show_default=True, help="MLflow experiment name.")
def export(suite: str | None, searches: bool, output: str, force: bool, tracking_uri: str | None,
           experiment: str) -> None:
    """Write a suite's runs as one CSV, one row per run: its benchmark runs (any status) and the searches, trials and
    refits of the same (dataset, model, horizon) cells, with every tag, param and final metric. With --searches,
    every search and its trials and refits, whether or not a suite used it.

    `mixbench table --runs FILE` and `mixbench leaderboard --runs FILE` rebuild the tables from it without MLflow.

    \b
    Examples:
      mixbench export --suite paper --output runs.csv
      mixbench export --suite paper --output results/paper/runs.csv --force --tracking-uri sqlite:///reproduce/mlflow.db
      mixbench export --searches --output searches.csv
    """
    from benchmarks.tracking.store import TrackingStore
    from results.export import export_rows, export_search_rows, export_summary, write_export
    from results.output import check_output_file

    if (suite is None) == (not searches):
        raise click.UsageError("give either --suite NAME or --searches")
    path = check_output_file(output, force)
    store = TrackingStore.resolve(tracking_uri)
    rows = export_search_rows(store, experiment) if searches else export_rows(store, experiment, suite)
    write_export(rows, path)
    click.echo(f"wrote {path}: {export_summary(rows)}", err=True)
