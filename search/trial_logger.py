"""The driver's Ray Tune callback that keeps each trial's MLflow child run in step with Tune.

With a local store (SQLite or files) the driver alone writes it, so concurrent trials never lock or corrupt it: epoch
metrics are logged as results arrive, params/final metrics/artifacts when a trial ends. With an http(s) tracking
server the trials log their own runs and this callback only ends the runs of stopped and failed trials. A fused
group's members each have their own run, kept in step the same way from the group's per-member reports.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune import Callback

from search.group_trial import MEMBER_ROWS_KEY
from search.groups import MEMBERS_KEY, member_id
from search.space import EXPERIMENT_KEY, SearchSpace
from search.trial import GPU_IDS_KEY, PLACEMENT_KEYS, SEARCH_METRIC
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
        self.placed: set[str] = set()   # trials whose runs are tagged with their GPUs

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "runs": None, "live": {}, "placed": set()}

    def setup(self, **info: Any) -> None:
        self.runs = TrialRuns(self.tracking)
        self.live = {}
        self.placed = set()

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        if self.trials_log_themselves:
            return
        for ident, config in _runs_of(trial):
            # A proposal that is no valid experiment fails; its end is recorded with the error.
            if ident not in self.live and EXPERIMENT_KEY in config:
                live = self.runs.open(ident, config[EXPERIMENT_KEY])
                if live is not None:
                    self.live[ident] = live

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any],
                        **info: Any) -> None:
        if GPU_IDS_KEY in result and trial.trial_id not in self.placed:
            self.placed.add(trial.trial_id)
            for ident, _ in _runs_of(trial):
                if ident in self.live:
                    self.live[ident].writer.set_tags({key: result[key] for key in PLACEMENT_KEYS if key in result})
        if MEMBER_ROWS_KEY in result:
            for index, row in result[MEMBER_ROWS_KEY]:
                live = self.live.get(member_id(trial.trial_id, index))
                if live is not None:
                    live.log_epoch(row)
            return
        live = self.live.get(trial.trial_id)
        if live is not None and "epoch" in result:
            live.log_epoch(result)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        result = trial.last_result or {}
        if MEMBERS_KEY not in trial.config:
            self._end(trial.trial_id, trial.config, result, "finished" if "test_mse" in result else "stopped")
            return
        outcomes = result.get(MEMBERS_KEY) or []
        for index, (ident, config) in enumerate(_runs_of(trial)):
            outcome = outcomes[index] if index < len(outcomes) else {"state": "running"}
            if outcome["state"] != "running":
                self._end(ident, config, outcome, outcome["state"])
            elif ident in self.live or self.trials_log_themselves:  # the time budget ended the group
                self._end(ident, config, outcome, "stopped")

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        error = error_line(trial)
        for ident, config in _runs_of(trial):
            self.live.pop(ident, None)
            self.runs.end(ident, "failed", error=error, params=self.space.decode(config).flat())

    def _end(self, ident: str, config: dict[str, Any], outcome: dict[str, Any], state: str) -> None:
        """End run `ident` as `state`: with its test and artifacts when it has them, else with its proposal."""
        live = self.live.pop(ident, None)
        if "test_mse" in outcome and state in ("finished", "stopped"):
            if live is not None:
                live.finish(outcome, Path(outcome["artifact_dir"]), state)
            return
        self.runs.end(ident, state, error=outcome.get("error"), params=self.space.decode(config).flat(),
                      metrics=reached_metrics(outcome) if state == "stopped" else None)


def reached_metrics(result: dict[str, Any]) -> dict[str, float]:
    """`best_val_loss` and `epochs_run` of a trial (or member) stopped before its test, from its last report."""
    reached = {"best_val_loss": result.get(SEARCH_METRIC), "epochs_run": result.get("epoch")}
    return {key: float(value) for key, value in reached.items() if value is not None and math.isfinite(value)}


def _runs_of(trial: Trial) -> list[tuple[str, dict[str, Any]]]:
    """(run id, proposal) of each MLflow child run a Tune trial has: itself, or each member of a fused group."""
    members = trial.config.get(MEMBERS_KEY)
    if members is None:
        return [(trial.trial_id, trial.config)]
    return [(member_id(trial.trial_id, index), member) for index, member in enumerate(members)]


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
