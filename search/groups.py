"""Fused groups of a search: the Ray Tune searcher that asks Optuna for every configuration of a group (one Tune trial,
one fused training array), the shape-defining settings once per group and the others per configuration, trains each
configuration as one member per seed, and tells Optuna every configuration's result (its seeds' mean).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from ray.tune.search import Searcher

from benchmarks.training.fused_engine import fusion_key, member_settings
from search.space import EXPERIMENT_KEY, INVALID_KEY, BoundSpace, SearchSpace

MEMBERS_KEY = "members"   # a group trial's config: one {path: value, EXPERIMENT_KEY | INVALID_KEY: ...} per member
SEEDS_KEY = "config_seeds"   # a group trial's config: how many consecutive members train one configuration
MEMBER_ID_SEPARATOR = "_"


def member_id(trial_id: str, index: int) -> str:
    """The id of member `index` of group trial `trial_id` (its MLflow child run's trial_id tag), e.g. `b8f2425b_2`."""
    return f"{trial_id}{MEMBER_ID_SEPARATOR}{index}"


def tune_trial_of(run_trial_id: str) -> str:
    """The Tune trial a child run's trial_id tag belongs to: a member's group trial, or a plain trial itself (Tune's
    trial ids, 8 hex digits, hold no separator)."""
    group, separator, index = run_trial_id.rpartition(MEMBER_ID_SEPARATOR)
    return group if separator and index.isdigit() else run_trial_id


def member_paths(space: SearchSpace) -> frozenset[str]:
    """The space's settings each member of a group proposes for itself (the fused engine's `member_settings`); every
    other setting shapes the array and is one per group."""
    own = member_settings(space.model)
    return frozenset(param.path for param in space.params if param.path in own)


def config_index(member: int, seeds: int) -> int:
    """The configuration of a group that member `member` trains (its `seeds` members are consecutive)."""
    return member // seeds


@dataclass(frozen=True)
class GroupPlan:
    """How a search's configurations form groups: `members` per fused array (1 = no fusion), `trials`
    configurations in all, each trained with `seeds` seeds (one member per seed, in the same group)."""

    trials: int
    members: int
    seeds: int = 1

    def __post_init__(self) -> None:
        if self.members % self.seeds:
            raise ValueError(f"{self.members} members per group do not hold whole configurations of {self.seeds} seeds")

    @property
    def configs_per_group(self) -> int:
        return self.members // self.seeds

    @property
    def groups(self) -> int:
        """Tune trials the search runs (the last group may be smaller)."""
        return math.ceil(self.trials / self.configs_per_group)


class GroupSearcher(Searcher):
    """Proposes one group per Tune trial: Optuna's TPE asks for the first configuration freely, then the group's other
    configurations with the first one's shape-defining values enqueued (so they vary only in per-member settings);
    each configuration becomes `plan.seeds` members, one per seed (the search's seed, then the next integers).

    Every configuration is its own Optuna trial, told its seeds' mean best validation loss (FAIL when one diverged or
    the group failed), so TPE learns from each; its random start covers `startup_groups` whole groups, so that it has
    seen that many shapes before it models them. `first_point` (Optuna's parameter values, e.g. the recipe's) is
    enqueued before anything, so it is the first configuration. Tune pickles the searcher into the experiment and
    saves its state with `save` as JSON (the study's trials), which `restore` reads back on `--resume`; the restored
    sampler is seeded anew from the seed and the number of trials, so it does not repeat the proposals it made before.
    """

    def __init__(self, bound: BoundSpace, plan: GroupPlan, metric: str, seed: int, startup_groups: int,
                 first_point: dict[str, Any] | None = None) -> None:
        super().__init__(metric=metric, mode="min")
        self.bound = bound
        self.plan = plan
        self.seed = seed
        self.startup_trials = startup_groups * plan.configs_per_group
        self.member_paths = member_paths(bound.space)
        self.study = self._new_study(seed)
        if first_point is not None:
            self.study.enqueue_trial(first_point)
        self.proposed = 0
        self.asked: dict[str, list[int]] = {}   # Tune trial id -> its configurations' Optuna trial numbers

    def _new_study(self, seed: int) -> optuna.Study:
        return optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=self.startup_trials))

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict[str, Any],
                              **spec: Any) -> bool:
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        size = min(self.plan.configs_per_group, self.plan.trials - self.proposed)
        if size <= 0:
            return Searcher.FINISHED
        first = self.study.ask()
        configs = [self.bound(first)]
        shape = {name: value for name, value in first.params.items()
                 if name.split("@", 1)[0] not in self.member_paths}
        trials = [first]
        for _ in range(size - 1):
            self.study.enqueue_trial(shape, skip_if_exists=False)
            trial = self.study.ask()
            trials.append(trial)
            configs.append(self.bound(trial))
        _mark_unfusable(configs)
        self.asked[trial_id] = [trial.number for trial in trials]
        self.proposed += size
        return {MEMBERS_KEY: [_seeded(config, self.seed + offset) for config in configs
                              for offset in range(self.plan.seeds)], SEEDS_KEY: self.plan.seeds}

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        numbers = self.asked.pop(trial_id, None)
        if numbers is None:
            return
        outcomes = (result or {}).get(MEMBERS_KEY) or []
        seeds = self.plan.seeds
        for index, trial in enumerate(numbers):
            values = [_member_value(outcomes, member, self.metric) for member in range(index * seeds, (index + 1) * seeds)]
            if all(value is not None for value in values):
                self.study.tell(trial, sum(values) / seeds)  # type: ignore[arg-type]
            else:
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)

    def save(self, checkpoint_path: str) -> None:
        state = {"proposed": self.proposed, "asked": self.asked,
                 "trials": [_trial_record(trial) for trial in self.study.get_trials(deepcopy=False)]}
        Path(checkpoint_path).write_text(json.dumps(state))

    def restore(self, checkpoint_path: str) -> None:
        state = json.loads(Path(checkpoint_path).read_text())
        self.study = self._new_study(self.seed + len(state["trials"]))
        for record in state["trials"]:
            self.study.add_trial(_trial_from_record(record))
        self.proposed = state["proposed"]
        self.asked = state["asked"]


def _member_value(outcomes: list[dict[str, Any]], index: int, metric: str) -> float | None:
    """Member `index`'s best validation loss, or None when it failed, diverged or never reported."""
    outcome = outcomes[index] if index < len(outcomes) else {}
    value = outcome.get(metric)
    return float(value) if value is not None and math.isfinite(value) and outcome.get("state") != "failed" else None


def _seeded(config: dict[str, Any], seed: int) -> dict[str, Any]:
    """A configuration's member training with `seed` (its proposal with the experiment's seed replaced)."""
    if EXPERIMENT_KEY not in config:
        return dict(config)
    return {**config, EXPERIMENT_KEY: config[EXPERIMENT_KEY].with_seed(seed)}


def _mark_unfusable(members: list[dict[str, Any]]) -> None:
    """Mark as invalid a member whose experiment cannot share the first member's array: a space whose shape
    settings depend on a per-member one (through `when`, a bound or `divides`) can give it other shapes."""
    valid = [member for member in members if EXPERIMENT_KEY in member]
    if not valid:
        return
    key = fusion_key(valid[0][EXPERIMENT_KEY])
    for member in valid[1:]:
        if fusion_key(member[EXPERIMENT_KEY]) != key:
            del member[EXPERIMENT_KEY]
            member[INVALID_KEY] = ("its shape settings differ from its group's first member (a shape setting of the "
                                   "space depends on a per-member one); make shape settings independent of "
                                   f"{', '.join(sorted(member_settings(valid[0][EXPERIMENT_KEY].model)))}")


def _trial_record(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """An Optuna trial as JSON: state, value, params in their internal form, distributions and system attributes."""
    return {"state": trial.state.name, "value": trial.value, "system_attrs": trial.system_attrs,
            "params": {name: trial.distributions[name].to_internal_repr(value) for name, value in trial.params.items()},
            "distributions": {name: optuna.distributions.distribution_to_json(distribution)
                              for name, distribution in trial.distributions.items()}}


def _trial_from_record(record: dict[str, Any]) -> optuna.trial.FrozenTrial:
    distributions = {name: optuna.distributions.json_to_distribution(text)
                     for name, text in record["distributions"].items()}
    return optuna.trial.create_trial(
        state=optuna.trial.TrialState[record["state"]], value=record["value"], distributions=distributions,
        params={name: distributions[name].to_external_repr(value) for name, value in record["params"].items()},
        system_attrs=record["system_attrs"])
