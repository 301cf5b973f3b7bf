"""MLflow logging as a training callback (live, while the engine trains), and `log_result` for a finished result
(the benchmark grid and refit, whose driver owns the store); both write through `RunWriter`, so runs read the same.
"""
from __future__ import annotations

from typing import Mapping, Sequence

from benchmarks.experiment import Experiment
from benchmarks.tracking.store import TrackingStore
from benchmarks.tracking.writer import RunWriter
from benchmarks.training.callbacks import EpochReport, ExperimentResult, TrainingCallback


class MLflowCallback(TrainingCallback):
    """Logs one training run to MLflow: created at start (with the epochs a resumed run already did), each epoch as it
    ends, the final metrics and artifacts at the end; FAILED if training raises, KILLED if it is interrupted.

    `target` is a store (then `experiment_name` and `kind` say where the new run goes and what it is) or an open
    `RunWriter` (a run created elsewhere, e.g. a trial's; epochs it already holds are not logged again).
    """

    def __init__(self, target: TrackingStore | RunWriter, experiment_name: str | None = None, *,
                 kind: str | None = None, run_name: str | None = None, parent_run_id: str | None = None,
                 tags: Mapping[str, str] | None = None) -> None:
        if isinstance(target, RunWriter):
            if any(value is not None for value in (experiment_name, kind, run_name, parent_run_id, tags)):
                raise TypeError("MLflowCallback onto an existing run takes the writer alone")
            self.store, self.writer = target.store, target
        else:
            if experiment_name is None or kind is None:
                raise TypeError("MLflowCallback for a new run needs experiment_name and kind")
            self.store, self.writer = target, None
        self.experiment_name = experiment_name
        self.kind = kind
        self.run_name = run_name
        self.parent_run_id = parent_run_id
        self.tags = dict(tags or {})

    @property
    def run_id(self) -> str | None:
        """The run's id once training started (None before)."""
        return self.writer.run_id if self.writer is not None else None

    def on_start(self, experiment: Experiment, history: Sequence[dict[str, float]]) -> None:
        if self.writer is None:
            self.writer = RunWriter.create(self.store, self.experiment_name, experiment, kind=self.kind,
                                           run_name=self.run_name, parent_run_id=self.parent_run_id, tags=self.tags)
        elif history:
            logged = self.writer.logged_epochs()
            history = [row for row in history if int(row["epoch"]) not in logged]
        self.writer.log_epochs(history)

    def on_epoch(self, report: EpochReport) -> None:
        self.writer.log_epochs([report.row()])

    def on_end(self, result: ExperimentResult) -> None:
        try:
            self.writer.finish(result)
        except BaseException as error:
            self.writer.fail(failed_status(error))
            raise

    def on_failure(self, error: BaseException) -> None:
        if self.writer is not None:
            self.writer.fail(failed_status(error))


def log_result(store: TrackingStore, experiment_name: str, result: ExperimentResult, *, kind: str,
               run_name: str | None = None, parent_run_id: str | None = None,
               tags: Mapping[str, str] | None = None) -> str:
    """Log a finished experiment (tags, params, every epoch, final metrics, artifacts) as one run, with the start and
    end times the engine recorded; its run id."""
    writer = RunWriter.create(store, experiment_name, result.experiment, kind=kind, run_name=run_name,
                              parent_run_id=parent_run_id, tags=tags, start_time=result.started_at or None)
    try:
        writer.log_epochs(result.history)
        writer.finish(result, after_the_fact=True)
    except BaseException as error:
        writer.fail(failed_status(error))
        raise
    return writer.run_id


def failed_status(error: BaseException) -> str:
    """The MLflow status of a run that `error` ended: KILLED for an interrupt (Ctrl+C), else FAILED."""
    return "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
