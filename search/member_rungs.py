"""ASHA for the configurations of fused groups: one Ray actor holds every rung of a search, so a configuration (one
member, or the members training it with several seeds, ranked on their mean) is stopped against all configurations of
all groups, exactly as Ray Tune's ASHAScheduler stops whole trials; its state is kept in the search's folder so
`--resume` goes on with the same rungs.
"""
from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path

import numpy as np
import ray

from benchmarks.training.callbacks import EpochReport, TrainingCallback
from benchmarks.training.engine import NonFiniteLossError

REDUCTION_FACTOR = 4   # Ray Tune's ASHAScheduler default: the best quarter of each rung goes on
GRACE_PERIOD = 1
# Below the search's folder: its top-level files are what --resume checks against recorded digests, and the actor
# rewrites this one at any time.
RUNGS_FILE = Path("member_rungs") / "rungs.json"


def milestones(max_epochs: int, grace_period: int = GRACE_PERIOD, reduction_factor: int = REDUCTION_FACTOR) -> list[int]:
    """The epochs at which ASHA decides, as Ray's ASHAScheduler places them: grace * rf^k below max_t."""
    found, epoch = [], grace_period
    while epoch < max_epochs:
        found.append(epoch)
        epoch *= reduction_factor
    return found


class Rungs:
    """The validation losses recorded per milestone and the decisions taken; `decide` is ASHA's rule for minimising."""

    def __init__(self, max_epochs: int, path: str) -> None:
        self.path = Path(path)
        self.milestones = milestones(max_epochs)
        # milestone -> member -> (validation loss, whether it went on)
        self.recorded: dict[int, dict[str, tuple[float, bool]]] = {milestone: {} for milestone in self.milestones}
        if self.path.is_file():
            for milestone, entries in json.loads(self.path.read_text()).items():
                self.recorded.setdefault(int(milestone), {}).update(
                    {member: (value, keep) for member, (value, keep) in entries.items()})

    def decide(self, member: str, epoch: int, value: float) -> bool:
        """Whether member `member`, with validation loss `value` after `epoch` epochs, goes on: at a milestone it has
        not reached before, it stops when worse than the best 1/rf of the values recorded there so far. A member
        that comes back to a milestone (its group ran again after a failure or `--resume`) gets its first answer."""
        if epoch not in self.recorded:
            return True
        recorded = self.recorded[epoch]
        if member in recorded:
            return recorded[member][1]
        finite = [seen for seen, _ in recorded.values() if math.isfinite(seen)]
        keep = not finite or not math.isfinite(value) or value <= float(np.percentile(finite, 100 / REDUCTION_FACTOR))
        recorded[member] = (value if math.isfinite(value) else math.inf, keep)
        self._save()
        return keep

    def decide_many(self, entries: list[tuple[str, int, float]]) -> list[bool]:
        """`decide` for each (member, epoch, value) in order, in one call (one actor round trip per array epoch)."""
        return [self.decide(member, epoch, value) for member, epoch, value in entries]

    def _save(self) -> None:
        """Write the rungs atomically: a search killed mid-write keeps the previous file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps({str(milestone): entries for milestone, entries in self.recorded.items()}))
        os.replace(temporary, self.path)


def rungs_actor(name: str, max_epochs: int, folder: Path) -> ray.actor.ActorHandle:
    """The search's rung actor (created once, found again by name); it needs no CPU of the trials'."""
    actor = ray.remote(num_cpus=0)(Rungs)
    return actor.options(name=actor_name(name), get_if_exists=True, lifetime=None).remote(
        max_epochs, str(folder / RUNGS_FILE))


def actor_name(search_name: str) -> str:
    return f"mixbench-rungs-{search_name}"


class GroupRungs:
    """A fused group's ASHA decisions, once per array epoch: its members' validation losses of the epoch, averaged
    per configuration (`seeds` consecutive members train one configuration), go to the rungs actor in one call; the
    members of a configuration it stops are stopped together (each keeps its best weights and is tested; its run is
    marked stopped). A seed that left early (its patience ran out) counts in its configuration's mean with its last
    loss; when a seed diverges, the configuration has failed (Optuna is told so) and its other seeds stop at once.
    """

    def __init__(self, rungs: ray.actor.ActorHandle, config_ids: dict[int, str]) -> None:
        self.rungs = rungs
        self.config_ids = config_ids   # member index -> the id its configuration has in the rungs
        self.reported: set[int] = set()
        self.last: dict[int, float] = {}
        self.failed: set[str] = set()
        self.stopped: set[int] = set()

    def record(self, index: int, value: float) -> None:
        self.reported.add(index)
        self.last[index] = value

    def fail(self, index: int) -> None:
        self.failed.add(self.config_ids[index])

    def decide(self, epoch: int) -> set[int]:
        """The members to stop after `epoch`: those of a configuration ASHA stops or one of whose seeds diverged."""
        reported, self.reported = self.reported, set()
        configs = {self.config_ids[index] for index in reported}
        stopping = {index for index in reported if self.config_ids[index] in self.failed}
        entries = [(config, epoch, statistics.fmean(value for index, value in self.last.items()
                                                    if self.config_ids[index] == config))
                   for config in sorted(configs - self.failed)]
        keep = ray.get(self.rungs.decide_many.remote(entries)) if entries else []
        stopping |= {index for (config, _, _), kept in zip(entries, keep) if not kept for index in reported
                     if self.config_ids[index] == config}
        self.stopped |= stopping
        return stopping


class RungRecorder(TrainingCallback):
    """Hands member `index`'s validation loss of each epoch, or its divergence, to its group's rungs."""

    def __init__(self, rungs: GroupRungs, index: int) -> None:
        self.rungs = rungs
        self.index = index

    def on_epoch(self, report: EpochReport) -> None:
        self.rungs.record(self.index, report.val_loss)

    def on_failure(self, error: BaseException) -> None:
        if isinstance(error, NonFiniteLossError):
            self.rungs.fail(self.index)
