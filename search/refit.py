"""Retrain a search's best config with several seeds, in parallel on the Ray cluster (or, in a fused search, as one
fused training array in one task): each seed is its own child run (mixbench.kind=refit) and the parent gets the test
MSE/MAE mean and standard deviation over the seeds.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

import ray

from benchmarks.experiment import Experiment
from benchmarks.tracking.callback import MLflowCallback, log_result
from benchmarks.tracking.writer import TEST_COMPLETE_TAG, TEST_WINDOWS_TAG
from benchmarks.training.callbacks import ExperimentResult, TrainingCallback
from benchmarks.training.engine import run_experiment
from benchmarks.training.fused_engine import run_fused
from benchmarks.worker_share import WorkerShare
from search.trial_runs import TrialTracking

REFIT_KIND = "refit"


@dataclass(frozen=True)
class RefitStats:
    """Test metrics of the finished refit runs (this session's and earlier ones of a resumed search)."""

    seeds: tuple[int, ...]
    failed: tuple[str, ...]
    test_mse_mean: float
    test_mse_std: float
    test_mae_mean: float
    test_mae_std: float
    test_windows: str = ""   # "<scored>/<total>" of the least complete refit test
    test_complete: bool = True

    def metrics(self) -> dict[str, float]:
        """What the parent run logs."""
        return {"refit_runs": len(self.seeds), "refit_test_mse_mean": self.test_mse_mean,
                "refit_test_mse_std": self.test_mse_std, "refit_test_mae_mean": self.test_mae_mean,
                "refit_test_mae_std": self.test_mae_std}


def refit_seeds(first_seed: int, count: int) -> list[int]:
    """The seeds of a refit: the search's seed and the next count - 1 integers."""
    return [first_seed + offset for offset in range(count)]


def refit(experiment: Experiment, seeds: list[int], share: WorkerShare, tracking: TrialTracking,
          trials_log_themselves: bool, artifact_root: Path, fused: bool = False) -> RefitStats | None:
    """Train `experiment` once per seed not yet refitted under `tracking.parent_run_id`; None if no run finished.

    `fused`: the seeds train as one fused array in one task with `share` (as the search's groups did); otherwise one
    task per seed. With a local store the driver logs each result (it owns the store); with an http(s) server each
    task logs itself.
    """
    client = tracking.store.client()
    experiment_id = tracking.store.experiment_id(tracking.experiment)
    filter_string = (f"tags.`mlflow.parentRunId` = '{tracking.parent_run_id}' and tags.`mixbench.kind` = "
                     f"'{REFIT_KIND}' and attributes.status = 'FINISHED'")
    done = {run.data.tags.get("seed") for run in client.search_runs([experiment_id], filter_string)}
    todo = [seed for seed in seeds if str(seed) not in done]
    own_tracking = tracking if trials_log_themselves else None
    if fused and len(todo) > 1:
        train_all = ray.remote(num_cpus=share.cpus, num_gpus=share.gpus)(train_seeds_fused)
        together = train_all.remote([experiment.with_seed(seed) for seed in todo], share,
                                    [str(artifact_root / f"seed-{seed}") for seed in todo], own_tracking)
        pending = {seed: together for seed in todo}
    else:
        train = ray.remote(num_cpus=share.cpus, num_gpus=share.gpus)(train_seed)
        pending = {seed: train.remote(experiment.with_seed(seed), share, str(artifact_root / f"seed-{seed}"),
                                      own_tracking) for seed in todo}
    failed = []
    for position, (seed, future) in enumerate(pending.items()):
        try:
            result = ray.get(future)
        except ray.exceptions.RayTaskError as error:
            cause = getattr(error, "cause", None) or error
            failed.append(f"seed {seed}: {type(cause).__name__}: {(str(cause).splitlines() or [''])[0]}")
            continue
        if isinstance(result, list):
            result = result[position]
        if not isinstance(result, ExperimentResult):
            failed.append(f"seed {seed}: {type(result).__name__}: {(str(result).splitlines() or [''])[0]}")
            continue
        if not trials_log_themselves:
            log_result(tracking.store, tracking.experiment, result, kind=REFIT_KIND, run_name=f"refit-seed-{seed}",
                       parent_run_id=tracking.parent_run_id, tags=tracking.tags)
    runs = client.search_runs([experiment_id], filter_string)
    finished = [run for run in runs if "test_mse" in run.data.metrics]
    if not finished:
        return None
    mse = [run.data.metrics["test_mse"] for run in finished]
    mae = [run.data.metrics["test_mae"] for run in finished]
    incomplete = [run for run in finished if run.data.tags.get(TEST_COMPLETE_TAG) == "false"]
    return RefitStats(
        seeds=tuple(sorted(int(run.data.tags["seed"]) for run in finished)), failed=tuple(failed),
        test_mse_mean=statistics.fmean(mse), test_mse_std=statistics.stdev(mse) if len(mse) > 1 else 0.0,
        test_mae_mean=statistics.fmean(mae), test_mae_std=statistics.stdev(mae) if len(mae) > 1 else 0.0,
        test_windows=(incomplete or finished)[0].data.tags.get(TEST_WINDOWS_TAG, ""), test_complete=not incomplete,
    )


def train_seed(experiment: Experiment, share: WorkerShare, artifact_dir: str,
               tracking: TrialTracking | None) -> ExperimentResult:
    """One refit run in a Ray worker, with the same share of the machine as a trial."""
    share.apply()
    callbacks: list[TrainingCallback] = []
    if tracking is not None:
        callbacks.append(MLflowCallback(tracking.store, tracking.experiment, kind=REFIT_KIND,
                                        run_name=f"refit-seed-{experiment.seed}",
                                        parent_run_id=tracking.parent_run_id, tags=tracking.tags))
    return run_experiment(experiment, callbacks=callbacks, artifact_dir=Path(artifact_dir))


def train_seeds_fused(experiments: list[Experiment], share: WorkerShare, artifact_dirs: list[str],
                      tracking: TrialTracking | None) -> list[ExperimentResult | BaseException]:
    """The refit seeds as one fused array in a Ray worker (a diverging seed comes back as its error)."""
    share.apply()
    callbacks = [[MLflowCallback(tracking.store, tracking.experiment, kind=REFIT_KIND,
                                 run_name=f"refit-seed-{experiment.seed}", parent_run_id=tracking.parent_run_id,
                                 tags=tracking.tags)] if tracking is not None else [] for experiment in experiments]
    return run_fused(experiments, callbacks=callbacks, artifact_dirs=[Path(path) for path in artifact_dirs])
