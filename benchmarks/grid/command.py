"""`mixbench benchmark`: the click command that runs the benchmark grid."""
from __future__ import annotations

import sys

import click

from benchmarks.errors import SettingError

_CONTEXT = {"help_option_names": ["-h", "--help"]}
_TRACKING_HELP = "MLflow store or server (default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db)."


def _names(text: str, option: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise SettingError(f"{option} {text!r} is empty; give comma-separated names, e.g. {option} weather,ETTh1")
    return names


def _integers(text: str, option: str) -> list[int]:
    try:
        return [int(value) for value in _names(text, option)]
    except ValueError:
        raise SettingError(f"{option} {text!r} must be comma-separated integers, e.g. {option} 96,192,336,720") \
            from None


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
@click.option("--limit-eval-batches", type=int, default=None,
              help="Cap validation and test batches (smoke runs; such runs are tagged test_complete=false and left "
                   "out of leaderboards and tables unless --include-capped).")
@click.option("--gpus-per-run", type=float, default=None,
              help="GPU share per run; fractions pack several runs on one GPU "
                   "(default: 0.25 if the Ray cluster has GPUs, else 0).")
@click.option("--cpus-per-run", type=float, default=1.0, show_default=True, help="CPUs reserved per run.")
@click.option("--address", default=None, help="Ray cluster to use (default: start Ray on this machine).")
@click.option("--tracking-uri", default=None, help=_TRACKING_HELP)
@click.option("--experiment", default="mixbench", show_default=True, help="MLflow experiment name.")
@click.option("--data-dir", default=None, help="Dataset folder (default: $MIXBENCH_DATA_DIR, else ./dataset).")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Check dataset files against the registry's sha256 (--no-verify runs on modified copies).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto: the run's GPU share when it has one, else the CPU.")
@click.option("--fuse/--no-fuse", default=None,
              help="Train the seeds of a cell as one fused array (one process, one step for all seeds; results as "
                   "if trained apart). Default: on GPUs, not on CPUs.")
def benchmark(datasets: str, models: str, horizons: str, seeds: int, configs: str, suite: str, seq_len: int,
              epochs: int | None, limit_train_batches: int | None, limit_eval_batches: int | None,
              gpus_per_run: float | None, cpus_per_run: float, address: str | None, tracking_uri: str | None,
              experiment: str, data_dir: str | None, verify: bool, device: str, fuse: bool | None) -> None:
    """Run the benchmark grid (datasets x models x horizons x seeds) as Ray tasks; log every run to MLflow.

    Cells already complete in the suite (same dataset, model, pred_len, seed and config_hash; FINISHED with
    test_mse) are skipped, so a failed or interrupted benchmark is finished by running the same command again.
    A failed cell is reported and the others go on; the exit code is 1 if any failed.

    \b
    Examples:
      mixbench benchmark --datasets weather,ETTh1 --horizons 96,192,336,720 --seeds 3 --suite paper
      mixbench benchmark --datasets weather --models mixmamba --configs best --suite paper  # needs a search per horizon
      mixbench benchmark --datasets ETTh1 --models dlinear --horizons 96 --seeds 1 --epochs 1 --suite smoke
      mixbench benchmark --datasets ETTh1 --models dlinear --horizons 96 --seeds 3 --epochs 1 --fuse --suite fused
    """
    # Imported here: Ray, MLflow and torch take seconds to import, which `mixbench benchmark --help` need not wait for.
    from benchmarks.grid.runner import BenchmarkConfig, run_benchmark
    from benchmarks.tracking.store import quiet_run_urls

    quiet_run_urls()
    config = BenchmarkConfig(
        datasets=_names(datasets, "--datasets"), models=_names(models, "--models"),
        horizons=_integers(horizons, "--horizons"), seeds=seeds, configs=configs, suite=suite, seq_len=seq_len,
        epochs=epochs, limit_train_batches=limit_train_batches, limit_eval_batches=limit_eval_batches,
        gpus_per_run=gpus_per_run, cpus_per_run=cpus_per_run, address=address, tracking_uri=tracking_uri,
        experiment=experiment, data_dir=data_dir, verify=verify, device=device, fuse=fuse,
    )
    outcome = run_benchmark(config, echo=lambda line: click.echo(line, err=True))
    click.echo(f"suite {outcome.suite}: {len(outcome.logged)} runs logged, {len(outcome.skipped)} skipped as "
               f"complete, {len(outcome.failed)} failed")
    if limit_eval_batches is not None and outcome.logged:
        click.echo(f"note: --limit-eval-batches {limit_eval_batches} may have capped the test pass: such runs are "
                   "tagged test_complete=false and left out of `mixbench leaderboard` and `mixbench table` unless "
                   "--include-capped", err=True)
    for cell, message in outcome.failed:
        click.echo(f"failed: {cell.describe()}: {message}", err=True)
    if outcome.failed:
        click.echo(f"re-run the same command to retry the {len(outcome.failed)} failed cells", err=True)
        sys.exit(1)
