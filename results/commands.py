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


def _output_path(output: str) -> Path:
    path = Path(output)
    if not path.parent.is_dir():
        raise ResultsError(f"--output {output}: folder {path.parent} does not exist; create it or pick another path")
    return path


def _write(text: str, output: str | None) -> None:
    if output is None:
        click.echo(text, nl=False)
        return
    path = _output_path(output)
    path.write_text(text)
    click.echo(f"wrote {path}", err=True)


def _leaderboard(tracking_uri: str | None, experiment: str, suite: str | None, dataset: str | None,
                 runs: str | None) -> Leaderboard:
    from results.leaderboard import build_leaderboard
    from results.runs import load_benchmark_records, load_export_records

    if runs is not None:
        suite, records = load_export_records(Path(runs), suite, dataset)
    else:
        # MLflow loads only when the runs come from a store: `--runs FILE` rebuilds the tables without it.
        from benchmarks.tracking.store import TrackingStore

        suite, records = load_benchmark_records(TrackingStore.resolve(tracking_uri), experiment, suite, dataset)
    return build_leaderboard(records, suite)


_RUNS_HELP = "Read the runs from a `mixbench export` CSV instead of MLflow."


@click.command("leaderboard", context_settings=_CONTEXT)
@click.option("--suite", default=None, help="Benchmark suite (default: the most recently run one).")
@click.option("--dataset", default=None, help="Only this dataset.")
@click.option("--format", "output_format", type=click.Choice(["table", "csv"]), default="table", show_default=True)
@click.option("--output", default=None, help="Write to this file instead of stdout.")
@click.option("--runs", default=None, metavar="FILE", help=_RUNS_HELP)
@click.option("--tracking-uri", default=None, help=_TRACKING_HELP)
@click.option("--experiment", default="mixbench", show_default=True, help="MLflow experiment name.")
def leaderboard(suite: str | None, dataset: str | None, output_format: str, output: str | None, runs: str | None,
                tracking_uri: str | None, experiment: str) -> None:
    """Test MSE/MAE per (dataset, horizon, model): mean ± sample std (ddof=1) over seeds, plus the Avg over horizons.

    Where a cell has several configs, the one with the lowest mean best_val_loss is reported (never chosen by test).

    \b
    Example:
      mixbench leaderboard --suite paper --format csv --output leaderboard.csv
    """
    from results.leaderboard import leaderboard_csv, leaderboard_text

    board = _leaderboard(tracking_uri, experiment, suite, dataset, runs)
    _write(leaderboard_csv(board) if output_format == "csv" else leaderboard_text(board), output)


@click.command("table", context_settings=_CONTEXT)
@click.option("--format", "output_format", type=click.Choice(["latex", "markdown", "csv"]), default="latex",
              show_default=True, help="latex: a complete pdflatex document (booktabs).")
@click.option("--output", default=None, help="Write to this file instead of stdout.")
@click.option("--suite", default=None, help="Benchmark suite (default: the most recently run one).")
@click.option("--dataset", default=None, help="Only this dataset.")
@click.option("--reference", type=click.Choice(["paper"]), default=None,
              help="Add the MixMamba paper's published numbers and our relative difference, (ours-paper)/paper in %.")
@click.option("--std", "show_std", is_flag=True, help="Show mean ± sample std over seeds.")
@click.option("--figures", default=None, metavar="DIR",
              help="Also write one PNG per dataset into DIR: test MSE by horizon, a line per model, error bars = std.")
@click.option("--runs", default=None, metavar="FILE", help=_RUNS_HELP)
@click.option("--tracking-uri", default=None, help=_TRACKING_HELP)
@click.option("--experiment", default="mixbench", show_default=True, help="MLflow experiment name.")
def table(output_format: str, output: str | None, suite: str | None, dataset: str | None, reference: str | None,
          show_std: bool, figures: str | None, runs: str | None, tracking_uri: str | None, experiment: str) -> None:
    """The long-term forecasting table in the MixMamba paper's layout, from the leaderboard.

    Datasets are row groups (horizons, then Avg), models column pairs (MSE, MAE): MixMamba, iTransformer, PatchTST,
    DLinear, then others. Per row and metric the best is bold and the second underlined, compared as displayed (3
    decimals): ties share the mark, second is the next distinct value; 1st Count counts bold cells over all rows,
    Avg included. Missing cells show "--" (empty in CSV).

    \b
    Example:
      mixbench table --format latex --reference paper --std --output table.tex --figures figures/
    """
    from results.figures import write_figures
    from results.render import render
    from results.table import build_table

    board = _leaderboard(tracking_uri, experiment, suite, dataset, runs)
    _write(render(build_table(board, reference), output_format, show_std), output)
    if figures is not None:
        for path in write_figures(board, Path(figures)):
            click.echo(f"wrote {path}", err=True)


@click.command("export", context_settings=_CONTEXT)
@click.option("--suite", required=True, help="Benchmark suite to export.")
@click.option("--output", required=True, help="CSV file to write.")
@click.option("--tracking-uri", default=None, help=_TRACKING_HELP)
@click.option("--experiment", default="mixbench", show_default=True, help="MLflow experiment name.")
def export(suite: str, output: str, tracking_uri: str | None, experiment: str) -> None:
    """Write a suite's runs as one CSV, one row per run: its benchmark runs (any status) and the searches, trials and
    refits of the same (dataset, model, horizon) cells, with every tag, param and final metric.

    `mixbench table --runs FILE` and `mixbench leaderboard --runs FILE` rebuild the tables from it without MLflow.

    \b
    Example:
      mixbench export --suite paper --output results/paper/runs.csv
    """
    from benchmarks.tracking.store import TrackingStore
    from results.export import export_rows, export_summary, write_export

    path = _output_path(output)
    rows = export_rows(TrackingStore.resolve(tracking_uri), experiment, suite)
    write_export(rows, path)
    click.echo(f"wrote {path}: {export_summary(rows)}", err=True)
