"""The MLflow child runs of one search, one per Ray Tune trial id: created once, found again after `--resume`, never
logged twice; each ends FINISHED (trained and tested, or stopped early by ASHA), FAILED (with the error) or KILLED.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.tracking import (
    FINAL_METRICS,
    TrackedRun,
    TrackingConfig,
    resolve_tracking_uri,
    start_run,
    tracking_client,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

    from search.trial import ResolvedTrial

TRIAL_ID_TAG = "trial_id"
STATE_TAG = "trial_state"   # finished | stopped | failed | interrupted
ERROR_TAG = "error"
ENDED = ("FINISHED", "FAILED")


class LiveTrialRun:
    """An open child run: epochs are logged once each (by step), then it is finished, stopped or failed."""

    def __init__(self, run: TrackedRun, logged_epochs: set[int]) -> None:
        self.run = run
        self.logged_epochs = logged_epochs

    @property
    def run_id(self) -> str:
        return self.run.run_id

    def log_epoch(self, row: dict[str, float]) -> None:
        """Log one epoch's metrics (step = epoch) unless that epoch is already in the run (a resumed trial)."""
        epoch = int(row["epoch"])
        if epoch in self.logged_epochs:
            return
        self.run.log_epochs([row])
        self.logged_epochs.add(epoch)

    def finish(self, final: dict[str, Any], artifact_dir: Path | None) -> None:
        """Log the final metrics and the artifact folder, then mark the run FINISHED."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.run.client.log_batch(self.run_id, metrics=[Metric(name, float(final[name]), now, 0)
                                                        for name in FINAL_METRICS])
        if artifact_dir is not None and Path(artifact_dir).is_dir():
            self.run.client.log_artifacts(self.run_id, str(artifact_dir))
        end_run(self.run.client, self.run_id, "finished")


class TrialRuns:
    """Finds, opens and ends the child runs of the search whose parent run is `tracking.parent_run_id`.

    `tracking` carries the store, experiment, parent and the tags every child gets (kind=trial, protocol ...).
    """

    def __init__(self, tracking: TrackingConfig) -> None:
        self.tracking = dataclasses.replace(tracking, uri=resolve_tracking_uri(tracking.uri), kind="trial")
        self.client: MlflowClient = tracking_client(self.tracking.uri)
        experiment = self.client.get_experiment_by_name(self.tracking.experiment)
        if experiment is None:
            raise RuntimeError(f"MLflow experiment {self.tracking.experiment!r} vanished from {self.tracking.uri}")
        self.experiment_id = experiment.experiment_id

    def all(self) -> list[Run]:
        """Every child run of this search's parent (trials only)."""
        return self.client.search_runs(
            [self.experiment_id],
            filter_string=(f"tags.`mlflow.parentRunId` = '{self.tracking.parent_run_id}' "
                           "and tags.`mixbench.kind` = 'trial'"),
            max_results=10_000,
        )

    def find(self, trial_id: str) -> Run | None:
        """The child run of Tune trial `trial_id`, if one was created."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=(f"tags.`mlflow.parentRunId` = '{self.tracking.parent_run_id}' "
                           f"and tags.{TRIAL_ID_TAG} = '{trial_id}'"),
            max_results=1,
        )
        return runs[0] if runs else None

    def open(self, trial_id: str, resolved: ResolvedTrial) -> LiveTrialRun | None:
        """The trial's run, created with its tags and params or reopened to go on; None if it already ended."""
        existing = self.find(trial_id)
        if existing is None:
            tracking = dataclasses.replace(self.tracking, run_name=f"trial-{trial_id}",
                                           tags={**self.tracking.tags, TRIAL_ID_TAG: trial_id})
            run = start_run(tracking, resolved.spec, resolved.model_config, resolved.train_config,
                            resolved.data_config)
            return LiveTrialRun(run, set())
        if existing.info.status in ENDED:
            return None
        run_id = existing.info.run_id
        if existing.info.status != "RUNNING":
            self.client.update_run(run_id, status="RUNNING")
        logged = {metric.step for metric in self.client.get_metric_history(run_id, "val_loss")}
        return LiveTrialRun(TrackedRun(self.client, run_id, self.tracking.uri), logged)

    def end(self, trial_id: str, state: str, *, error: str | None = None, params: dict[str, Any] | None = None) -> None:
        """End the trial's run as `state` (stopped, failed or interrupted), creating a bare one if it has none yet.

        A bare run (the trial failed before its run was opened) gets the search tags and `params` (the proposal).
        """
        existing = self.find(trial_id)
        if existing is not None and existing.info.status in ENDED:
            return
        if existing is None:
            tags = {"mixbench.kind": "trial", "mlflow.parentRunId": self.tracking.parent_run_id or "",
                    TRIAL_ID_TAG: trial_id, **self.tracking.tags}
            run_id = self.client.create_run(self.experiment_id, run_name=f"trial-{trial_id}", tags=tags).info.run_id
            for key, value in (params or {}).items():
                self.client.log_param(run_id, key, str(value))
        else:
            run_id = existing.info.run_id
        if error is not None:
            self.client.set_tag(run_id, ERROR_TAG, error[:5000])
        end_run(self.client, run_id, state)


def end_run(client: MlflowClient, run_id: str, state: str) -> None:
    """Tag the run's trial state and set its MLflow status: finished/stopped FINISHED, failed FAILED, else KILLED."""
    client.set_tag(run_id, STATE_TAG, state)
    status = {"finished": "FINISHED", "stopped": "FINISHED", "failed": "FAILED"}.get(state, "KILLED")
    client.set_terminated(run_id, status=status)
