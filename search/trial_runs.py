"""The MLflow child runs of one search, one per Ray Tune trial id: created once, found again after `--resume`, never
logged twice; each ends FINISHED (trained and tested, or stopped early by ASHA), FAILED (with the error) or KILLED.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Run

from benchmarks.experiment import Experiment
from benchmarks.tracking.store import TrackingStore
from benchmarks.tracking.writer import RunWriter, coverage_tags
from benchmarks.training.callbacks import FINAL_METRICS, EpochReport, ExperimentResult, TrainingCallback

TRIAL_KIND = "trial"
TRIAL_ID_TAG = "trial_id"
STATE_TAG = "trial_state"   # finished | stopped | failed | interrupted
ERROR_TAG = "error"
ENDED = ("FINISHED", "FAILED")


@dataclass(frozen=True)
class TrialTracking:
    """Where a search's child runs go: the store, the MLflow experiment, the parent run and the tags every child gets.
    Picklable: trials that log themselves (an http(s) server) receive it."""

    store: TrackingStore
    experiment: str
    parent_run_id: str
    tags: dict[str, str] = field(default_factory=dict)


class LiveTrialRun:
    """An open child run: epochs are logged once each (by step), then it is finished, stopped or failed."""

    def __init__(self, writer: RunWriter, logged_epochs: set[int]) -> None:
        self.writer = writer
        self.logged_epochs = logged_epochs

    @property
    def run_id(self) -> str:
        return self.writer.run_id

    def log_epoch(self, row: dict[str, float]) -> None:
        """Log one epoch's metrics (step = epoch) unless that epoch is already in the run (a resumed trial)."""
        epoch = int(row["epoch"])
        if epoch in self.logged_epochs:
            return
        self.writer.log_epochs([row])
        self.logged_epochs.add(epoch)

    def finish(self, final: dict[str, Any], artifact_dir: Path | None, state: str = "finished") -> None:
        """Log the final metrics, how many test windows they cover, and the artifact folder; end the run as `state`
        (finished, or stopped: a fused member that ASHA stopped is still tested)."""
        now = int(time.time() * 1000)
        client = self.writer.client
        client.log_batch(self.run_id, metrics=[Metric(name, float(final[name]), now, 0) for name in FINAL_METRICS])
        self.writer.set_tags(coverage_tags(int(final["test_windows"]), int(final["test_windows_total"])))
        if artifact_dir is not None and Path(artifact_dir).is_dir():
            client.log_artifacts(self.run_id, str(artifact_dir))
        end_run(self.writer, state)


class TrialRunCallback(TrainingCallback):
    """A trial that logs its own child run (an http(s) server): epochs as they end, the end once tested; `pruned`
    says whether ASHA stopped it (its run then ends as stopped)."""

    def __init__(self, live: LiveTrialRun, pruned: Callable[[], bool] = lambda: False) -> None:
        self.live = live
        self.pruned = pruned

    def on_start(self, experiment: Experiment, history: Sequence[dict[str, float]]) -> None:
        for row in history:
            self.live.log_epoch(row)

    def on_epoch(self, report: EpochReport) -> None:
        self.live.log_epoch(report.row())

    def on_end(self, result: ExperimentResult) -> None:
        self.live.finish({**result.final_metrics(), "test_windows": result.test_windows,
                          "test_windows_total": result.test_windows_total}, result.artifact_dir,
                         "stopped" if self.pruned() else "finished")


class TrialRuns:
    """Finds, opens and ends the child runs of the search whose parent is `tracking.parent_run_id`."""

    def __init__(self, tracking: TrialTracking) -> None:
        self.tracking = tracking
        self.client = tracking.store.client()
        self.experiment_id = tracking.store.experiment_id(tracking.experiment)

    def all(self) -> list[Run]:
        """Every child run of this search's parent (trials only)."""
        return self.client.search_runs(
            [self.experiment_id],
            filter_string=(f"tags.`mlflow.parentRunId` = '{self.tracking.parent_run_id}' "
                           f"and tags.`mixbench.kind` = '{TRIAL_KIND}'"),
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

    def open(self, trial_id: str, experiment: Experiment) -> LiveTrialRun | None:
        """The trial's run, created with its tags and params or reopened to go on; None if it already ended."""
        existing = self.find(trial_id)
        if existing is None:
            writer = RunWriter.create(self.tracking.store, self.tracking.experiment, experiment, kind=TRIAL_KIND,
                                      run_name=f"trial-{trial_id}", parent_run_id=self.tracking.parent_run_id,
                                      tags={**self.tracking.tags, TRIAL_ID_TAG: trial_id})
            return LiveTrialRun(writer, set())
        if existing.info.status in ENDED:
            return None
        run_id = existing.info.run_id
        if existing.info.status != "RUNNING":
            self.client.update_run(run_id, status="RUNNING")
        logged = {metric.step for metric in self.client.get_metric_history(run_id, "val_loss")}
        return LiveTrialRun(RunWriter.reopen(self.tracking.store, run_id), logged)

    def end(self, trial_id: str, state: str, *, error: str | None = None, params: dict[str, Any] | None = None,
            metrics: dict[str, float] | None = None) -> None:
        """End the trial's run as `state` (stopped, failed or interrupted), creating a bare one if it has none yet.

        A bare run (the trial failed before its run was opened) gets the search tags and `params` (the proposal);
        `metrics` (e.g. the best validation loss of a trial the time budget stopped untested) are logged first.
        """
        existing = self.find(trial_id)
        if existing is not None and existing.info.status in ENDED:
            return
        if existing is None:
            tags = {"mixbench.kind": TRIAL_KIND, "mlflow.parentRunId": self.tracking.parent_run_id,
                    TRIAL_ID_TAG: trial_id, **self.tracking.tags}
            run_id = self.client.create_run(self.experiment_id, run_name=f"trial-{trial_id}", tags=tags).info.run_id
            for key, value in (params or {}).items():
                self.client.log_param(run_id, key, str(value))
        else:
            run_id = existing.info.run_id
        if error is not None:
            self.client.set_tag(run_id, ERROR_TAG, error[:5000])
        for key, value in (metrics or {}).items():
            self.client.log_metric(run_id, key, value)
        end_run(RunWriter.reopen(self.tracking.store, run_id), state)


def end_run(writer: RunWriter, state: str) -> None:
    """Tag the run's trial state and set its MLflow status: finished/stopped FINISHED, failed FAILED, else KILLED."""
    writer.client.set_tag(writer.run_id, STATE_TAG, state)
    writer.client.set_terminated(writer.run_id,
                                 status={"finished": "FINISHED", "stopped": "FINISHED", "failed": "FAILED"}.get(
                                     state, "KILLED"))
