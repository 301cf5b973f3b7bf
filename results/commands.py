"""`mixbench benchmark`, `mixbench leaderboard` and `mixbench table`: the click commands of the results package."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from benchmarks.errors import InputError

_CONTEXT = {"help_option_names": ["-h", "--help"]}
_TRACKING_HELP = "MLflow store or server (default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db)."


def _names(text: str, option: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise InputError(f"{option} {text!r} is empty; give comma-separated names, e.g. {option} weather,ETTh1")
    return names


def _integers(text: str, option: str) -> list[int]:
    try:
        return [int(value) for value in _names(text, option)]
    except ValueError:
        raise InputError(f"{option} {text!r} must be comma-separated integers, e.g. {option} 96,192,336,720") from None


def _output_path(output: str) -> Path:
    path = Path(output)
    if not path.parent.is_dir():
        raise InputError(f"--output {output}: folder {path.parent} does not exist; create it or pick another path")
    return path


def _write(text: str, output: str | None) -> None:
    if output is None:
        click.echo(text, nl=False)
        return
    path = _output_path(output)
    path.write_text(text)
    click.echo(f"wrote {path}", err=True)


@click.command("benchmark", context_settings=_CONTEXT)
@click.option("--datasets", required=True, help="Comma-separated registered datasets, e.g. weather,ETTh1.")
@click.option("--models", default="mixmamba,patchtst,itransformer,dlinear", show_default=True,
              help="Comma-separated registered models.")
@click.option("--horizons", default="96,192,336,720", show_default=True, help="Comma-separated pred_lens.")
@click.option("--seeds", type=int, default=3, show_default=True, help="Seeds per cell: 2021, 2022, ...")
@click.option("--configs", default="default", show_default=True,
              help="default: recipe defaults; best: the best config of the latest finished search per "
                   "(dataset, model, pred_len) in MLflow; or a YAML FILE of entries (model, dataset, pred_len, "
                   "model_overrides, train_overrides, optional display_name) as `mixbench search` writes.")
@click.option("--suite", default="default", show_default=True,
              help="Name of this benchmark; tags every run; re-running a suite skips its complete cells.")
@click.option("--seq-len", type=int, default=96, show_default=True,
              help="Lookback window (a FILE entry may set its own).")
@click.option("--epochs", type=int, default=None, help="Training epochs for every run (default: each config's).")
@click.option("--limit-train-batches", type=int, default=None, help="Cap training batches per epoch (smoke runs).")
@click.option("--limit-eval-batches", type=int, default=None, help="Cap validation and test batches (smoke runs).")
@click.option("--gpus-per-run", type=float, default=None,
              help="GPU share per run; fractions pack several runs on one GPU "
                   "(default: 0.25 if the Ray cluster has GPUs, else 0).")
@click.option("--cpus-per-run", type=float, default=1.0, show_default=True, help="CPUs reserved per run.")
@click.option("--address", default=None, help="Ray cluster to use (default: start Ray on this machine).")
@click.option("--tracking-uri", default=None, help=_TRACKING_HELP)
@click.option("--experiment", default="mixbench", show_default=True, help="MLflow experiment name.")
@click.option("--data-dir", default=None, help="Dataset folder (default: $MIXBENCH_DATA_DIR, else ./dataset).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto: the run's GPU share when it has one, else the CPU.")
def benchmark(datasets: str, models: str, horizons: str, seeds: int, configs: str, suite: str, seq_len: int,
              epochs: int | None, limit_train_batches: int | None, limit_eval_batches: int | None,
              gpus_per_run: float | None, cpus_per_run: float, address: str | None, tracking_uri: str | None,
              experiment: str, data_dir: str | None, device: str) -> None:
    """Run the benchmark grid (datasets x models x horizons x seeds) as Ray tasks; log every run to MLflow.

    Cells already complete in the suite (same dataset, model, pred_len, seed and config_hash; FINISHED with
    test_mse) are skipped, so a failed or interrupted benchmark is finished by running the same command again.
    A failed cell is reported and the others go on; the exit code is 1 if any failed.

    \b
    Example:
      mixbench benchmark --datasets weather,ETTh1 --horizons 96,192,336,720 --seeds 3 --suite paper
    """
    from results.benchmark import BenchmarkConfig, run_benchmark

    config = BenchmarkConfig(
        datasets=_names(datasets, "--datasets"), models=_names(models, "--models"),
        horizons=_integers(horizons, "--horizons"), seeds=seeds, configs=configs, suite=suite, seq_len=seq_len,
        epochs=epochs, limit_train_batches=limit_train_batches, limit_eval_batches=limit_eval_batches,
        gpus_per_run=gpus_per_run, cpus_per_run=cpus_per_run, address=address, tracking_uri=tracking_uri,
        experiment=experiment, data_dir=data_dir, device=device,
    )
    outcome = run_benchmark(config, echo=lambda line: click.echo(line, err=True))
    click.echo(f"suite {outcome.suite}: {len(outcome.logged)} runs logged, {len(outcome.skipped)} skipped as "
               f"complete, {len(outcome.failed)} failed")
    for cell, message in outcome.failed:
        click.echo(f"failed: {cell.describe()}: {message}", err=True)
    if outcome.failed:
        click.echo(f"re-run the same command to retry the {len(outcome.failed)} failed cells", err=True)
        sys.exit(1)


def _leaderboard(tracking_uri: str | None, experiment: str, suite: str | None, dataset: str | None,
                 runs: str | None):
    from benchmarks.tracking import resolve_tracking_uri
    from results.leaderboard import build_leaderboard
    from results.runs import load_benchmark_records

    uri = resolve_tracking_uri(tracking_uri) if runs is None else ""
    suite, records = load_benchmark_records(uri, experiment, suite, dataset, None if runs is None else Path(runs))
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
    from benchmarks.tracking import resolve_tracking_uri
    from results.export import export_rows, export_summary, write_export

    path = _output_path(output)
    rows = export_rows(resolve_tracking_uri(tracking_uri), experiment, suite)
    write_export(rows, path)
    click.echo(f"wrote {path}: {export_summary(rows)}", err=True)
