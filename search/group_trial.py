"""One fused group as Ray Tune runs it in a worker: its members (proposed by GroupSearcher) trained as one fused
array, one report per epoch with every member's row, ASHA deciding per configuration (a member, or the members
training it with several seeds), and every member's outcome in each report. A member's outcome is saved in the search's folder when it leaves the array, so a restarted group (a retry or
`--resume`) trains only the members that had not left.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import ray
from ray import tune

from benchmarks.training.callbacks import EpochReport, ExperimentResult, TrainingCallback
from benchmarks.training.engine import GpuOutOfMemoryError, NonFiniteLossError
from benchmarks.training.fused_engine import run_fused
from search.groups import MEMBERS_KEY, SEEDS_KEY, config_index, member_id
from search.member_rungs import GroupRungs, RungRecorder
from search.space import EXPERIMENT_KEY, INVALID_KEY
from search.trial import (ARTIFACT_DIR, OUT_OF_MEMORY_FILE, SEARCH_METRIC, TrialSetup, placement,
                          epoch_row, trial_dirname)
from search.trial_runs import TrialRunCallback, TrialRuns

MEMBER_ROWS_KEY = "member_rows"   # a group report's epoch rows: [member index, row] per member that ran the epoch
MEMBERS_FOLDER = "members"        # members' outcomes once they left the array, in the search's folder


def run_group(config: dict[str, Any], setup: TrialSetup) -> None:
    """The Ray Tune function trainable of a fused group (see the module docstring). Running out of GPU memory fails
    the group (and its retries, at once); a diverging member fails alone."""
    trial_id = tune.get_context().get_trial_id()
    trial_dir = Path(tune.get_context().get_trial_dir())
    records = Path(setup.experiment_dir) / trial_dirname(trial_id)
    out_of_memory = records / OUT_OF_MEMORY_FILE
    if out_of_memory.is_file():
        raise GpuOutOfMemoryError(out_of_memory.read_text())
    setup.share.apply()
    members = config[MEMBERS_KEY]
    reporter = GroupReporter(records, [_saved_outcome(records, Path(setup.experiment_dir), index)
                                       or _first_outcome(member) for index, member in enumerate(members)],
                             placement())
    training = [index for index, outcome in enumerate(reporter.outcomes) if outcome["state"] == "running"]
    seeds = int(config.get(SEEDS_KEY, 1))
    rungs = GroupRungs(ray.get_actor(setup.rungs), {
        position: member_id(trial_id, config_index(index, seeds) * seeds) for position, index in enumerate(training)
    }) if setup.rungs else None
    runs = TrialRuns(setup.tracking) if setup.tracking is not None else None
    callbacks = []
    for position, index in enumerate(training):
        pruned = (lambda position=position: rungs is not None and position in rungs.stopped)
        member_callbacks: list[TrainingCallback] = [RungRecorder(rungs, position)] if rungs is not None else []
        if runs is not None:
            live = runs.open(member_id(trial_id, index), members[index][EXPERIMENT_KEY])
            if live is not None:
                member_callbacks.append(TrialRunCallback(live, pruned=pruned))
        member_callbacks.append(MemberReporter(reporter, index, pruned))
        callbacks.append(member_callbacks)

    def after_epoch(epoch: int) -> set[int]:
        stopping = rungs.decide(epoch) if rungs is not None else set()
        reporter.report_epoch(epoch)
        return stopping

    if training:
        try:
            run_fused([members[index][EXPERIMENT_KEY] for index in training], callbacks=callbacks,
                      artifact_dirs=[trial_dir / ARTIFACT_DIR / f"member_{index}" for index in training],
                      after_epoch=after_epoch)
        except GpuOutOfMemoryError as error:
            records.mkdir(parents=True, exist_ok=True)
            out_of_memory.write_text(str(error))
            raise
    tune.report(reporter.final())


class GroupReporter:
    """Every member's outcome so far (state, best validation loss, epochs; the test once it left the array), sent
    with each report, so the group's last result always says where each member stands; an outcome is saved under
    `records` when its member leaves."""

    def __init__(self, records: Path, outcomes: list[dict[str, Any]], where: dict[str, str]) -> None:
        self.records = records
        self.outcomes = outcomes
        self.where = where
        self.rows: list[tuple[int, dict[str, float]]] = []

    def best(self) -> float:
        values = [outcome[SEARCH_METRIC] for outcome in self.outcomes
                  if math.isfinite(outcome.get(SEARCH_METRIC, math.inf))]
        return min(values, default=math.inf)

    def member_epoch(self, index: int, row: dict[str, float]) -> None:
        self.outcomes[index].update(epoch=row["epoch"], **{SEARCH_METRIC: row[SEARCH_METRIC]})
        self.rows.append((index, row))

    def member_left(self, index: int, outcome: dict[str, Any]) -> None:
        self.outcomes[index] = outcome
        path = _outcome_path(self.records, index)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(outcome))

    def report_epoch(self, epoch: int) -> None:
        """One Tune report for the array's epoch: each member's row and every member's outcome."""
        rows, self.rows = self.rows, []
        tune.report({"epoch": epoch, SEARCH_METRIC: self.best(), MEMBER_ROWS_KEY: [list(row) for row in rows],
                     MEMBERS_KEY: [dict(outcome) for outcome in self.outcomes], **self.where})

    def final(self) -> dict[str, Any]:
        epochs = [outcome.get("epoch", 0) for outcome in self.outcomes]
        return {"epoch": max(epochs, default=0), SEARCH_METRIC: self.best(),
                MEMBERS_KEY: [dict(outcome) for outcome in self.outcomes], **self.where}


class MemberReporter(TrainingCallback):
    """Member `index`'s epochs and its end (tested, or diverged), handed to the group's reporter; `pruned` says
    whether ASHA stopped it."""

    def __init__(self, reporter: GroupReporter, index: int, pruned: Callable[[], bool]) -> None:
        self.reporter = reporter
        self.index = index
        self.pruned = pruned

    def on_epoch(self, report: EpochReport) -> None:
        self.reporter.member_epoch(self.index, epoch_row(report))

    def on_end(self, result: ExperimentResult) -> None:
        self.reporter.member_left(self.index, member_outcome(result, pruned=self.pruned()))

    def on_failure(self, error: BaseException) -> None:
        # Divergence repeats with the same settings; anything else fails the whole group, which a retry runs again.
        if isinstance(error, NonFiniteLossError):
            self.reporter.member_left(self.index, member_outcome(error, pruned=False))


def member_outcome(result: ExperimentResult | BaseException, *, pruned: bool) -> dict[str, Any]:
    """What the group reports of one trained member: finished (trained and tested), stopped (by ASHA, then tested
    on its best weights) or failed (diverged, with the error)."""
    if not isinstance(result, ExperimentResult):
        return {"state": "failed", "error": f"{type(result).__name__}: {str(result).splitlines()[0]}"}
    return {"state": "stopped" if pruned else "finished", "epoch": result.epochs_run,
            SEARCH_METRIC: result.best_val_loss, **result.final_metrics(), "artifact_dir": str(result.artifact_dir),
            "test_windows": result.test_windows, "test_windows_total": result.test_windows_total}


def _first_outcome(member: dict[str, Any]) -> dict[str, Any]:
    if INVALID_KEY in member:
        return {"state": "failed", "error": f"SpaceError: {member[INVALID_KEY]}"}
    return {"state": "running"}


def _outcome_path(records: Path, index: int) -> Path:
    return records / MEMBERS_FOLDER / f"{index}.json"


def _saved_outcome(records: Path, experiment_dir: Path, index: int) -> dict[str, Any] | None:
    """The outcome an earlier attempt of this group saved for member `index`, if any; one whose artifact folder lies
    outside the search's folder is not ours and is ignored."""
    path = _outcome_path(records, index)
    if not path.is_file():
        return None
    outcome = json.loads(path.read_text())
    artifact_dir = outcome.get("artifact_dir")
    if artifact_dir is not None and not Path(artifact_dir).resolve().is_relative_to(experiment_dir.resolve()):
        return None
    return outcome
