"""The live view of a search: one compact status line, refreshed as Ray Tune results arrive (replaces Tune's tables).

On a terminal the line is rewritten in place; otherwise (logs, CI) a new line is printed whenever a count or the best
changes, so the output stays short.
"""
from __future__ import annotations

import math
import sys
import time
from typing import TYPE_CHECKING, Any

from ray.tune import Callback

from search.groups import MEMBERS_KEY, SEEDS_KEY, member_id
from search.trial import SEARCH_METRIC

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

# Tune adds it to every result a trial reports.
REPORTED = "training_iteration"
# A terminal line is redrawn at most this often unless a count or the best changes.
REFRESH_S = 1.0


def trial_state(trial: Trial) -> str:
    """pending, running, finished (trained and tested), stopped (early, by ASHA or the time budget), skipped (the
    time budget ended the search before it reported anything) or failed."""
    if trial.status == "ERROR":
        return "failed"
    if trial.status == "TERMINATED":
        result = trial.last_result or {}
        return "finished" if "test_mse" in result else "stopped" if REPORTED in result else "skipped"
    return "running" if trial.status == "RUNNING" else "pending"


def member_states(trial: Trial) -> list[str]:
    """The state of each member of a fused group trial (one entry for a plain trial): a member's own outcome once
    the group reported it, else the group's state (a group the time budget ended has its unfinished members
    stopped, a failed group its members failed)."""
    group = trial_state(trial)
    members = trial.config.get(MEMBERS_KEY)
    if members is None:
        return [group]
    outcomes = (trial.last_result or {}).get(MEMBERS_KEY) or []
    states = []
    for index in range(len(members)):
        outcome = outcomes[index] if index < len(outcomes) else {}
        state = outcome.get("state", "running")
        if state == "running" and group in ("stopped", "skipped"):
            # The time budget ended the group with this member still in the array.
            state = "stopped" if "epoch" in outcome else "skipped"
        elif state == "running":
            state = group
        states.append(state)
    return states


def _search_values(trial: Trial) -> list[tuple[str, float | None]]:
    """(trial or configuration id, its search metric so far) for a plain trial or each configuration of a fused group
    (a member, or the mean of the members training it with several seeds, once each of them has a value)."""
    result = trial.last_result or {}
    if MEMBERS_KEY not in trial.config:
        return [(trial.trial_id, result.get(SEARCH_METRIC))]
    seeds = int(trial.config.get(SEEDS_KEY, 1))
    values = [outcome.get(SEARCH_METRIC) for outcome in result.get(MEMBERS_KEY) or []]
    found = []
    for first in range(0, len(values), seeds):
        seeded = values[first:first + seeds]
        mean = sum(seeded) / seeds if len(seeded) == seeds and None not in seeded else None
        found.append((member_id(trial.trial_id, first), mean))
    return found


def format_duration(seconds: float) -> str:
    """`m:ss`, or `h:mm:ss` from one hour."""
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class ProgressLine(Callback):
    """Prints `search NAME | 2 running, 3 finished, 1 stopped, 0 failed, 2 to go | best 0.4123 (trial ...) | 2:13/10:00`;
    with fused groups the counts are members (`num_trials` counts members too)."""

    def __init__(self, name: str, num_trials: int, time_budget_s: float | None) -> None:
        self.name = name
        self.num_trials = num_trials
        self.time_budget_s = time_budget_s
        self.start = time.monotonic()
        self.last_key: tuple[Any, ...] | None = None
        self.last_draw = -math.inf

    def setup(self, **info: Any) -> None:
        # Tune pickles callbacks with the experiment and restores them on --resume: restart the clock here.
        self.start = time.monotonic()
        self.last_key = None
        self.last_draw = -math.inf

    def line(self, trials: list[Trial]) -> tuple[str, tuple[Any, ...]]:
        """The status text and the part of it whose change forces a redraw (counts and best, not the clock)."""
        counts = dict.fromkeys(("running", "finished", "stopped", "failed"), 0)
        best: tuple[float, str] | None = None
        for trial in trials:
            for state in member_states(trial):
                if state in counts:
                    counts[state] += 1
            for ident, value in _search_values(trial):
                if value is not None and math.isfinite(value) and (best is None or value < best[0]):
                    best = (value, ident)
        to_go = max(self.num_trials - counts["finished"] - counts["stopped"] - counts["failed"] - counts["running"], 0)
        parts = [f"search {self.name}", ", ".join([f"{n} {state}" for state, n in counts.items()] + [f"{to_go} to go"])]
        parts.append(f"best {SEARCH_METRIC} {best[0]:.4f} (trial {best[1]})" if best else "best -")
        elapsed = format_duration(time.monotonic() - self.start)
        parts.append(f"{elapsed}/{format_duration(self.time_budget_s)}" if self.time_budget_s else elapsed)
        return " | ".join(parts), (tuple(counts.values()), to_go, best)

    def draw(self, trials: list[Trial]) -> None:
        text, key = self.line(trials)
        now = time.monotonic()
        changed = key != self.last_key
        if sys.stdout.isatty():
            if changed or now - self.last_draw >= REFRESH_S:
                sys.stdout.write("\r\033[K" + text)
                sys.stdout.flush()
                self.last_draw = now
        elif changed:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
        self.last_key = key

    def on_step_end(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        self.draw(trials)

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        # No last draw: after Ctrl+C Tune has already stopped the trials it will resume, which would read "stopped".
        if sys.stdout.isatty():
            sys.stdout.write("\n")
            sys.stdout.flush()
