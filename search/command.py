"""`mixbench search`: the click command that turns flags into a SearchConfig, runs it and prints what it found."""
from __future__ import annotations

import click

from benchmarks.errors import SettingError
from search.config import (
    CPU_LIMIT_EVAL_BATCHES,
    CPU_LIMIT_TRAIN_BATCHES,
    CPU_TRIALS_AT_ONCE,
    DEFAULT_EPOCHS,
    DEFAULT_GPU_SHARE,
    DEFAULT_TIME_BUDGET_S,
    DEFAULT_TRIALS,
    SCHEDULERS,
    SearchConfig,
)


def _seq_len_choices(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        choices = [int(item) for item in value.split(",") if item.strip()]
    except ValueError:
        raise SettingError(f"{{setting}} {value!r}: give comma-separated integers, e.g. 96,192,336",
                           setting="search_seq_len") from None
    return choices


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 118})
@click.option("--dataset", required=True, help="Registered dataset, e.g. weather or ETTh1.")
@click.option("--model", default="mixmamba", show_default=True, help="mixmamba, patchtst, itransformer or dlinear.")
@click.option("--pred-len", type=int, default=96, show_default=True, help="Forecast horizon.")
@click.option("--trials", type=int, default=DEFAULT_TRIALS, show_default=True, help="Trials Optuna proposes.")
@click.option("--epochs", type=int, default=DEFAULT_EPOCHS, show_default=True,
              help="Epochs per trial (ASHA's max_t; its grace period is 1 epoch).")
@click.option("--gpus-per-trial", type=float, default=None,
              help=f"GPU share per trial (or fused group): 1/n of a GPU, e.g. 0.25 packs 4 on a GPU (each caps its "
                   f"memory to that share), or whole GPUs. "
                   f"[default: {DEFAULT_GPU_SHARE} with GPUs, else 0]")
@click.option("--cpus-per-trial", type=float, default=None,
              help=f"CPUs per trial (also its torch threads). [default: the cluster's CPUs split between the trials "
                   f"that fit at once: GPUs / share, or {CPU_TRIALS_AT_ONCE} without GPUs]")
@click.option("--max-concurrent", type=int, default=None, help="Most trials at once. [default: as resources allow]")
@click.option("--scheduler", type=click.Choice(SCHEDULERS), default="asha", show_default=True,
              help="asha stops weak trials early on validation loss; fifo runs every trial to the end.")
@click.option("--time-budget", "time_budget_s", type=float, default=DEFAULT_TIME_BUDGET_S, show_default=True,
              help="Seconds until Tune stops every trial and proposes no more; 0 = no budget.")
@click.option("--seed", type=int, default=2021, show_default=True,
              help="Seeds the TPE sampler and every trial's training (refit seeds follow it).")
@click.option("--name", default=None, help="Experiment folder name. [default: <model>-<dataset>-pred<H>-seed<S>]")
@click.option("--resume", is_flag=True, help="Continue the interrupted search of the same name from its folder.")
@click.option("--address", default=None, help="Ray cluster address (host:port, ray://host:10001 or auto). "
                                              "[default: start Ray locally]")
@click.option("--space", default=None, type=click.Path(dir_okay=False),
              help="Search-space YAML. [default: search/spaces/<model>.yaml]")
@click.option("--search-seq-len", default=None, callback=_seq_len_choices,
              help="Also search the lookback over these values, e.g. 96,192,336 (else it is fixed at 96).")
@click.option("--refit-seeds", type=int, default=0, show_default=True,
              help="Retrain the best config with this many seeds and log test MSE/MAE mean +- std.")
@click.option("--tracking-uri", default=None, help="MLflow store. [default: $MLFLOW_TRACKING_URI, else ./mlflow.db]")
@click.option("--experiment", default="mixbench", show_default=True, help="MLflow experiment.")
@click.option("--data-dir", default=None, help="Dataset folder. [default: $MIXBENCH_DATA_DIR, else ./dataset]")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Check the dataset file against the registry's sha256 (--no-verify trains on a modified copy).")
@click.option("--limit-train-batches", type=int, default=None,
              help=f"Training batches per epoch, 0 = all. [default: {CPU_LIMIT_TRAIN_BATCHES} without GPUs, else all]")
@click.option("--limit-eval-batches", type=int, default=None,
              help=f"Batches per validation/test pass, 0 = all. [default: {CPU_LIMIT_EVAL_BATCHES} without GPUs, "
                   "else all]")
@click.option("--storage-path", default=None, help="Where Tune keeps experiment folders. [default: ./ray_results]")
@click.option("--fuse", default="auto", show_default=True, metavar="auto|off|K",
              help="Trials per fused group: K trials sharing every tensor shape train as one stacked model in one "
                   "Ray trial (the GPU/CPU shares are then per group). auto: on GPUs as many as a memory estimate "
                   "fits (at most 16), off without GPUs.")
@click.option("--config-seeds", type=int, default=1, show_default=True,
              help="Train each proposed configuration with this many seeds (as one fused array) and rank it on their "
                   "mean validation loss, which is robust to one lucky seed; --trials counts configurations.")
@click.option("--recipe-trial/--no-recipe-trial", default=True, show_default=True,
              help="Start from the recipe: its values of the searched settings are the first configuration, so the "
                   "search's best validation loss is never above the hand-tuned config's (once it trained).")
@click.option("--prefer-recipe", is_flag=True,
              help="Choose the recipe's configuration unless the best beats its mean validation loss by more than one "
                   "standard error (needs --config-seeds 2 or more).")
def search(**options: object) -> None:
    """Search a model's hyperparameters: Optuna proposes, Ray Tune runs, ASHA stops early, MLflow records.

    \b
    The defaults fit a 2-core laptop in a few minutes (MixMamba on weather, pred_len 96):
    8 trials x 3 epochs, 2 trials at once on 1 CPU each, 20 training / 10 evaluation batches
    per epoch without GPUs, and a 540 s time budget. MLflow gets one parent run (search) and
    one child run per trial; the best config is written as YAML for `mixbench benchmark --configs`.
    A test capped by --limit-eval-batches is starred in the table; the best trial is then tested on every window.

    \b
    Examples:
      mixbench search --dataset weather
      mixbench search --dataset ETTh1 --model patchtst --trials 40 --epochs 10 --gpus-per-trial 0.25
      mixbench search --dataset weather --resume          # after Ctrl+C or a crash
      mixbench search --dataset weather --search-seq-len 96,192,336 --refit-seeds 3 --name weather-lookbacks
      mixbench search --dataset weather --trials 64 --fuse 16 --gpus-per-trial 0.5 --name weather-fused  # 4 groups of 16
      mixbench search --dataset ETTh1 --trials 32 --config-seeds 3 --epochs 10 --name etth1-robust  # 3 seeds per config
    """
    # Imported here: Ray, Optuna, MLflow and torch take 3 s to import, which `mixbench search --help` need not wait for.
    from benchmarks.tracking.store import quiet_run_urls
    from search.runner import run_search

    quiet_run_urls()
    config = SearchConfig(**options)  # type: ignore[arg-type]
    outcome = run_search(config)
    for note in outcome.notes:
        click.echo(f"note: {note}")
    if outcome.interrupted:
        click.echo(f"search {outcome.name} interrupted ({outcome.counts['finished']} finished, "
                   f"{outcome.counts['stopped']} stopped, {outcome.counts['failed']} failed); "
                   "continue it with the same command plus --resume", err=True)
        raise click.Abort()
    click.echo(outcome.table)
    if outcome.best_trial_id is None:
        raise click.ClickException(f"no trial of {outcome.name} reported a finite validation loss; see the failed "
                                   f"trials' runs (tag `error`) in MLflow")
    recipe = f" (the recipe's: {outcome.recipe_value:.6g})" if outcome.recipe_value is not None else ""
    click.echo(f"best: trial {outcome.best_trial_id}, val_loss_best {outcome.best_value:.6g}{recipe}; config written to "
               f"{outcome.best_config_path}")
    for line in outcome.selection.lines() if outcome.selection is not None else ():
        click.echo(line)
    if outcome.best_test is not None:
        test = outcome.best_test
        click.echo(f"best trial's weights tested on all {int(test['test_windows'])} test windows: test MSE "
                   f"{test['test_mse']:.4f}, test MAE {test['test_mae']:.4f}")
    click.echo(f"next: mixbench benchmark --datasets {config.dataset} --models {config.model} --horizons "
               f"{config.pred_len} --configs {outcome.best_config_path} --suite searched   # 3 seeds, full epochs\n"
               f"      {outcome.open_runs}   # the search's runs in MLflow")
    if outcome.refit is not None:
        stats = outcome.refit
        capped = "" if stats.test_complete else (f" (on {stats.test_windows} test windows, --limit-eval-batches: a "
                                                 "smoke number, not a result)")
        click.echo(f"refit over seeds {', '.join(map(str, stats.seeds))}: test MSE {stats.test_mse_mean:.4f} +- "
                   f"{stats.test_mse_std:.4f}, test MAE {stats.test_mae_mean:.4f} +- {stats.test_mae_std:.4f}{capped}")
        for failure in stats.failed:
            click.echo(f"refit failed: {failure}", err=True)
