"""Retrain a search's best config with several seeds, in parallel on the Ray cluster: each seed is its own child run
(mixbench.kind=refit) and the parent gets the test MSE/MAE mean and standard deviation over the seeds.
"""
from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from search.space import ProposedConfig
from search.trial import TrialSetup

if TYPE_CHECKING:
    from benchmarks.engine import ExperimentResult
    from benchmarks.tracking import TrackingConfig

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


def refit(setup: TrialSetup, proposed: ProposedConfig, seeds: list[int], tracking: TrackingConfig,
          trials_log_themselves: bool, artifact_root: Path) -> RefitStats | None:
    """Train `proposed` once per seed not yet refitted under `tracking.parent_run_id`; None if no run finished.

    With a local store the driver logs each result (it owns the store); with an http(s) server each task logs itself.
    """
    import ray
    from benchmarks.tracking import log_experiment, resolve_tracking_uri, tracking_client

    uri = resolve_tracking_uri(tracking.uri)
    client = tracking_client(uri)
    experiment_id = client.get_experiment_by_name(tracking.experiment).experiment_id
    filter_string = (f"tags.`mlflow.parentRunId` = '{tracking.parent_run_id}' and tags.`mixbench.kind` = "
                     f"'{REFIT_KIND}' and attributes.status = 'FINISHED'")
    done = {run.data.tags.get("seed") for run in client.search_runs([experiment_id], filter_string)}
    refit_tracking = dataclasses.replace(tracking, uri=uri, kind=REFIT_KIND)
    train = ray.remote(num_cpus=setup.cpus_per_trial, num_gpus=setup.gpus_per_trial)(train_seed)
    pending = {}
    for seed in seeds:
        if str(seed) in done:
            continue
        seed_tracking = dataclasses.replace(refit_tracking, run_name=f"refit-seed-{seed}")
        pending[seed] = (seed_tracking, train.remote(setup, proposed, seed, str(artifact_root / f"seed-{seed}"),
                                                     seed_tracking if trials_log_themselves else None))
    failed = []
    for seed, (seed_tracking, future) in pending.items():
        try:
            result = ray.get(future)
        except ray.exceptions.RayTaskError as error:
            cause = getattr(error, "cause", None) or error
            failed.append(f"seed {seed}: {type(cause).__name__}: {(str(cause).splitlines() or [''])[0]}")
            continue
        if not trials_log_themselves:
            log_experiment(result, seed_tracking)
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


def train_seed(setup: TrialSetup, proposed: ProposedConfig, seed: int, artifact_dir: str,
               tracking: TrackingConfig | None) -> ExperimentResult:
    """One refit run in a Ray worker, with the same thread count and GPU share as a trial."""
    import torch

    from benchmarks.engine import run_experiment

    torch.set_num_threads(max(1, int(setup.cpus_per_trial)))
    if 0 < setup.gpus_per_trial < 1 and torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(setup.gpus_per_trial)
    return run_experiment(setup.spec(proposed, seed=seed), artifact_dir=Path(artifact_dir), tracking=tracking)
