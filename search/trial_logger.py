"""The driver's Ray Tune callback that keeps each trial's MLflow child run in step with Tune.

With a local store (SQLite or files) the driver alone writes it, so concurrent trials never lock or corrupt it: epoch
metrics are logged as results arrive, params/final metrics/artifacts when a trial ends. With an http(s) tracking
server the trials log their own runs and this callback only ends the runs of stopped and failed trials.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune import Callback

from search.space import EXPERIMENT_KEY, SearchSpace
from search.trial_runs import LiveTrialRun, TrialRuns, TrialTracking

if TYPE_CHECKING:
    from ray.tune.experiment import Trial


class TrialLogger(Callback):
    """Logs trials to MLflow from the driver; `trials_log_themselves` when they reach an http(s) server directly.

    Tune pickles its callbacks into the experiment folder and brings them back on `--resume`, so the MLflow client
    is made in `setup` (when a Tune run starts) and never pickled.
    """

    def __init__(self, tracking: TrialTracking, space: SearchSpace, trials_log_themselves: bool) -> None:
        self.tracking = tracking
        self.space = space
        self.trials_log_themselves = trials_log_themselves
        self.runs: TrialRuns | None = None
        self.live: dict[str, LiveTrialRun] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "runs": None, "live": {}}

    def setup(self, **info: Any) -> None:
        self.runs = TrialRuns(self.tracking)
        self.live = {}

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        if self.trials_log_themselves or trial.trial_id in self.live or EXPERIMENT_KEY not in trial.config:
            return  # a proposal that is no valid experiment fails; on_trial_error records it with the error
        live = self.runs.open(trial.trial_id, trial.config[EXPERIMENT_KEY])
        if live is not None:
            self.live[trial.trial_id] = live

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any],
                        **info: Any) -> None:
        live = self.live.get(trial.trial_id)
        if live is not None and "epoch" in result:
            live.log_epoch(result)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        result = trial.last_result or {}
        live = self.live.pop(trial.trial_id, None)
        if "test_mse" not in result:
            self.runs.end(trial.trial_id, "stopped", params=self.space.decode(trial.config).flat())
        elif live is not None:
            live.finish(result, Path(result["artifact_dir"]))

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self.live.pop(trial.trial_id, None)
        params = self.space.decode(trial.config).flat()
        self.runs.end(trial.trial_id, "failed", error=error_line(trial), params=params)


def error_line(trial: Trial) -> str:
    """The first line of what made the trial fail, e.g. `NonFiniteLossError: mixmamba on ETTh1 diverged ...`."""
    try:
        error = trial.get_pickled_error()
    except Exception:  # noqa: BLE001 - an unreadable error.pkl must not end the search; the text log says the same
        # Seen with Ray 2.60 after retries in reused actors: error.pkl found but empty (EOFError).
        error = None
    cause = getattr(error, "cause", None) or error
    if isinstance(cause, BaseException):
        text = str(cause).strip().splitlines()
        return f"{type(cause).__name__}: {text[0] if text else ''}".strip()
    lines = [line for line in (trial.get_error() or "").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "the trial failed (no error recorded by Ray Tune)"
