"""Retrain a search's best config with several seeds, in parallel on the Ray cluster: each seed is its own child run
(mixbench.kind=refit) and the parent gets the test MSE/MAE mean and standard deviation over the seeds.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

import ray

from benchmarks.experiment import Experiment
from benchmarks.tracking.callback import MLflowCallback, log_result
from benchmarks.training.callbacks import ExperimentResult, TrainingCallback
from benchmarks.training.engine import run_experiment
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

    def metrics(self) -> dict[str, float]:
        """What the parent run logs."""
        return {"refit_runs": len(self.seeds), "refit_test_mse_mean": self.test_mse_mean,
                "refit_test_mse_std": self.test_mse_std, "refit_test_mae_mean": self.test_mae_mean,
                "refit_test_mae_std": self.test_mae_std}


def refit_seeds(first_seed: int, count: int) -> list[int]:
    """The seeds of a refit: the search's seed and the next count - 1 integers."""
    return [first_seed + offset for offset in range(count)]


def refit(experiment: Experiment, seeds: list[int], share: WorkerShare, tracking: TrialTracking,
          trials_log_themselves: bool, artifact_root: Path) -> RefitStats | None:
    """Train `experiment` once per seed not yet refitted under `tracking.parent_run_id`; None if no run finished.

    With a local store the driver logs each result (it owns the store); with an http(s) server each task logs itself.
    """
    client = tracking.store.client()
    experiment_id = tracking.store.experiment_id(tracking.experiment)
    filter_string = (f"tags.`mlflow.parentRunId` = '{tracking.parent_run_id}' and tags.`mixbench.kind` = "
                     f"'{REFIT_KIND}' and attributes.status = 'FINISHED'")
    done = {run.data.tags.get("seed") for run in client.search_runs([experiment_id], filter_string)}
    train = ray.remote(num_cpus=share.cpus, num_gpus=share.gpus)(train_seed)
    pending = {
        seed: train.remote(experiment.with_seed(seed), share, str(artifact_root / f"seed-{seed}"),
                           tracking if trials_log_themselves else None)
        for seed in seeds if str(seed) not in done
    }
    failed = []
    for seed, future in pending.items():
        try:
            result = ray.get(future)
        except ray.exceptions.RayTaskError as error:
            cause = getattr(error, "cause", None) or error
            failed.append(f"seed {seed}: {type(cause).__name__}: {(str(cause).splitlines() or [''])[0]}")
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
    return RefitStats(
        seeds=tuple(sorted(int(run.data.tags["seed"]) for run in finished)), failed=tuple(failed),
        test_mse_mean=statistics.fmean(mse), test_mse_std=statistics.stdev(mse) if len(mse) > 1 else 0.0,
        test_mae_mean=statistics.fmean(mae), test_mae_std=statistics.stdev(mae) if len(mae) > 1 else 0.0,
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
