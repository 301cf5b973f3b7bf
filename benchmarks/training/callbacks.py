"""How training reports: a small callback protocol (start, epoch, batch, end, failure) the engine calls in order.

MLflow logging, Ray Tune reporting and progress bars are callbacks; the engine knows none of them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:
    from benchmarks.experiment import Experiment

EPOCH_METRICS = ("train_loss", "val_loss", "val_mse", "val_mae", "lr", "epoch_seconds", "samples_per_s")
FINAL_METRICS = ("best_val_loss", "best_epoch", "epochs_run", "test_mse", "test_mae")


@dataclass(frozen=True)
class EpochReport:
    """What callbacks get after each epoch's validation; `state()` is a checkpoint for `resume_state`."""

    epoch: int
    train_loss: float
    val_loss: float  # the watched metric (TrainConfig.val_metric)
    val_mse: float
    val_mae: float
    best_val_loss: float
    learning_rate: float
    seconds: float
    samples_per_s: float
    state: Callable[[], dict[str, Any]]

    def row(self) -> dict[str, float]:
        """The epoch as a history row: `epoch` and EPOCH_METRICS."""
        return {"epoch": self.epoch, "train_loss": self.train_loss, "val_loss": self.val_loss,
                "val_mse": self.val_mse, "val_mae": self.val_mae, "lr": self.learning_rate,
                "epoch_seconds": self.seconds, "samples_per_s": self.samples_per_s}


@dataclass(frozen=True)
class ExperimentResult:
    """A finished experiment: early-stopping outcome, test metrics over every test window and per-epoch history.

    test_windows / test_windows_total: the test windows scored and the split's count (equal unless the test pass
    was capped by train.limit_eval_batches). history rows hold `epoch` and EPOCH_METRICS.
    """

    experiment: Experiment
    best_epoch: int
    best_val_loss: float
    epochs_run: int
    test_mse: float
    test_mae: float
    history: tuple[dict[str, float], ...]
    artifact_dir: Path
    test_windows: int = 0
    test_windows_total: int = 0
    started_at: float = 0.0  # time.time() when the engine started the run, and when its test ended
    ended_at: float = 0.0

    def final_metrics(self) -> dict[str, float]:
        """The metrics logged once at the end of a run (FINAL_METRICS)."""
        return {name: float(getattr(self, name)) for name in FINAL_METRICS}

    @property
    def test_complete(self) -> bool:
        """Whether every test window was scored (False when train.limit_eval_batches capped the test pass)."""
        return is_test_complete(self.test_windows, self.test_windows_total)


def is_test_complete(windows: int, total: int) -> bool:
    """A test pass over `windows` of the split's `total` windows covered all of them."""
    return windows >= total


def capped_test_note(windows: int, total: int) -> str:
    """Empty for a complete test, else the words every console line puts beside a capped test score."""
    return "" if is_test_complete(windows, total) else f" (CAPPED TEST: {windows} of {total} test windows)"


class StopTraining(Exception):
    """Raised by a callback's `on_epoch` to end its run after that epoch, as if early stopping had fired (a search's
    scheduler pruning a trial): the run keeps its best weights, is tested and ends normally. The other callbacks
    still get that epoch."""


def notify_epoch(callbacks: Sequence[TrainingCallback], report: EpochReport) -> bool:
    """Calls every callback's on_epoch; whether one of them asked to stop (StopTraining)."""
    stop = False
    for callback in callbacks:
        try:
            callback.on_epoch(report)
        except StopTraining:
            stop = True
    return stop


class TrainingCallback:
    """Override what you need; every hook defaults to doing nothing. An exception raised from a hook stops training
    and propagates (after `on_failure` of every callback)."""

    def on_start(self, experiment: Experiment, history: Sequence[dict[str, float]]) -> None:
        """Training starts; `history` holds the epochs a resumed run already did (empty otherwise)."""

    def on_batch(self, epoch: int, step: int, steps: int) -> None:
        """A training step ended (no loss: nothing may wait for the GPU inside an epoch)."""

    def on_epoch(self, report: EpochReport) -> None:
        """An epoch's validation ended."""

    def on_end(self, result: ExperimentResult) -> None:
        """The run was tested and its artifacts written."""

    def on_failure(self, error: BaseException) -> None:
        """Training or testing raised `error` (KeyboardInterrupt included)."""
