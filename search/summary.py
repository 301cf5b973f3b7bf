"""What a finished search found: its configurations (a trial, or the members training one with several seeds) ranked
by the search metric (their mean), the table of the top ones, the best config as a YAML file the benchmark command
loads (`--configs FILE`), and the Optuna study rebuilt from the configurations for plots.
"""
from __future__ import annotations

import math
import statistics
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt
import optuna
import yaml
from optuna.visualization import matplotlib as optuna_plots

from benchmarks.experiment import Experiment
from benchmarks.models.registry import PROTOCOL_FIELDS
from benchmarks.tracking.writer import coverage_tags
from benchmarks.training.callbacks import is_test_complete
from search.groups import MEMBERS_KEY, SEEDS_KEY, config_index, member_id
from search.progress import member_states, trial_state
from search.space import EXPERIMENT_KEY, ProposedConfig, SearchSpace, in_distribution
from search.trial import SEARCH_METRIC

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

BEST_CONFIG_FILE = "best_config.yaml"
PLOT_FILES = ("optimization_history.png", "param_importances.png")


@dataclass(frozen=True)
class TrialSummary:
    """One trial (or member of a fused group) as the search ended it: its number (1 = proposed first), id (a
    member's is `<group trial id>_<index>`), state (finished/stopped/failed/...), proposal, last reported metrics
    resolved experiment (None for a proposal that made none) and the id of the Tune trial that ran it.
    """

    number: int
    trial_id: str
    state: str
    proposed: ProposedConfig
    metrics: dict[str, Any]
    experiment: Experiment | None = None
    tune_trial_id: str = ""
    config_id: str = ""   # the configuration it trains (its first seed's id); empty: its own

    @property
    def value(self) -> float | None:
        """The search metric (best validation loss so far), or None if the trial never reported a finite one."""
        value = self.metrics.get(SEARCH_METRIC)
        return float(value) if value is not None and math.isfinite(value) else None


@dataclass(frozen=True)
class ConfigSummary:
    """One proposed configuration and the trials (one per seed) that trained it; ranked on their mean."""

    members: tuple[TrialSummary, ...]

    @property
    def config_id(self) -> str:
        return self.members[0].config_id or self.members[0].trial_id

    @property
    def number(self) -> int:
        return self.members[0].number

    @property
    def proposed(self) -> ProposedConfig:
        return self.members[0].proposed

    @property
    def experiment(self) -> Experiment | None:
        """The first seed's experiment (the search's seed)."""
        return self.members[0].experiment

    @property
    def state(self) -> str:
        """failed when a seed failed, else finished when every seed finished, else the first other seed's state."""
        states = [member.state for member in self.members]
        if "failed" in states:
            return "failed"
        return next((state for state in states if state != "finished"), "finished")

    @property
    def values(self) -> list[float | None]:
        return [member.value for member in self.members]

    @property
    def value(self) -> float | None:
        """The seeds' mean search metric; None unless every seed reported a finite one and none failed."""
        values = self.values
        if self.state == "failed" or any(value is None for value in values):
            return None
        return statistics.fmean(values)  # type: ignore[arg-type]

    @property
    def value_std(self) -> float | None:
        """The standard deviation of the seeds' search metric (None with one seed)."""
        values = self.values
        return statistics.stdev(values) if self.value is not None and len(values) > 1 else None  # type: ignore

    def mean(self, metric: str) -> float | None:
        """The seeds' mean of `metric`, or None unless every seed has it."""
        found = [member.metrics.get(metric) for member in self.members]
        return statistics.fmean(found) if all(value is not None for value in found) else None

    @property
    def epochs(self) -> int:
        return max(int(member.metrics.get("epoch", 0)) for member in self.members)


def configurations(summaries: list[TrialSummary]) -> list[ConfigSummary]:
    """The trials grouped by the configuration they train, in the order they were proposed."""
    grouped: dict[str, list[TrialSummary]] = {}
    for summary in summaries:
        grouped.setdefault(summary.config_id or summary.trial_id, []).append(summary)
    return [ConfigSummary(tuple(members)) for members in grouped.values()]


def summarize(trials: list[Trial], space: SearchSpace) -> list[TrialSummary]:
    """Every trial in the order the searcher proposed them; a fused group counts as its members, in order."""
    trials = sorted(trials, key=trial_number)
    if not any(MEMBERS_KEY in trial.config for trial in trials):
        return [TrialSummary(trial_number(trial), trial.trial_id, trial_state(trial), space.decode(trial.config),
                             dict(trial.last_result or {}), trial.config.get(EXPERIMENT_KEY), trial.trial_id)
                for trial in trials]
    summaries: list[TrialSummary] = []
    for trial in trials:
        outcomes = (trial.last_result or {}).get(MEMBERS_KEY) or []
        seeds = int(trial.config.get(SEEDS_KEY, 1))
        for index, (member, state) in enumerate(zip(trial.config[MEMBERS_KEY], member_states(trial))):
            metrics = dict(outcomes[index]) if index < len(outcomes) else {}
            summaries.append(TrialSummary(len(summaries) + 1, member_id(trial.trial_id, index), state,
                                          space.decode(member), metrics, member.get(EXPERIMENT_KEY), trial.trial_id,
                                          member_id(trial.trial_id, config_index(index, seeds) * seeds)))
    return summaries


def trial_number(trial: Trial) -> int:
    """1 for the first proposed trial, 2 for the next ...: Tune's experiment tag starts with its trial counter
    (the ids are random, and a resumed experiment lists its trials by their last result).
    """
    return int(trial.experiment_tag.split("_", 1)[0])


def ranked(configs: list[ConfigSummary]) -> list[ConfigSummary]:
    """Configurations with a search-metric value (every seed's), best (lowest mean) first."""
    return sorted((c for c in configs if c.value is not None), key=lambda c: c.value)  # type: ignore[arg-type, return-value]


def top_table(configs: list[ConfigSummary], limit: int = 10, recipe_id: str | None = None) -> str:
    """A fixed-width table of the best `limit` configurations: metrics (seeds' means, with the validation spread
    across seeds when there are several), then the proposed settings. A test capped by limit_eval_batches is starred
    and explained under the table; the recipe's configuration is marked."""
    rows = ranked(configs)[:limit]
    seeded = any(len(config.members) > 1 for config in configs)
    spread = f" {'+- seeds':>9}" if seeded else ""
    header = (f"{'rank':>4}  {'trial':<16} {'state':<9} {'epochs':>6} {SEARCH_METRIC:>13}{spread} {'test_mse':>10} "
              f"{'test_mae':>10}  config")
    lines = [header]
    capped: set[str] = set()
    for rank, config in enumerate(rows, start=1):
        star = " "
        for member in config.members:
            metrics = member.metrics
            if "test_mse" in metrics and not is_test_complete(int(metrics.get("test_windows", 0)),
                                                                int(metrics.get("test_windows_total", 1))):
                star = "*"
                capped.add(f"{int(metrics['test_windows'])} of {int(metrics['test_windows_total'])}")
        means = {name: config.mean(name) for name in ("test_mse", "test_mae")}
        test = [f"{means[name]:9.4f}{star}" if means[name] is not None else f"{'-':>10}" for name in means]
        settings = " ".join(f"{key.split('.')[-1]}={_short(value)}" for key, value in config.proposed.flat().items())
        if config.config_id == recipe_id:
            settings = f"(recipe) {settings}"
        std = f" {config.value_std:9.4f}" if config.value_std is not None else f" {'-':>9}" if seeded else ""
        lines.append(f"{rank:>4}  {config.config_id:<16} {config.state:<9} {config.epochs:>6} "
                     f"{config.value:13.4f}{std} {test[0]} {test[1]}  {settings}")
    if capped:
        lines.append(f"* test on {', '.join(sorted(capped))} test windows only (--limit-eval-batches, the CPU "
                     "default): a smoke number, not a result; the best trial is tested on every window below")
    return "\n".join(lines)


def best_test_tags(windows: int, total: int) -> dict[str, str]:
    """The parent run's tags saying how many test windows its best_test_* metrics cover."""
    return {f"best_{key}": value for key, value in coverage_tags(windows, total).items()}


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def best_config(best: ConfigSummary, experiment: Experiment) -> dict[str, Any]:
    """The best trial as a `--configs` entry: the full resolved model config and the searched training settings.

    Epochs and batch limits are the search's budget, not part of the config, so they are left to the benchmark.
    """
    model_overrides = {key: value for key, value in experiment.model_config_dict().items()
                       if key not in PROTOCOL_FIELDS}
    return {"model": experiment.model, "dataset": experiment.dataset, "pred_len": experiment.pred_len,
            "seq_len": experiment.seq_len, "model_overrides": model_overrides,
            "train_overrides": dict(best.proposed.train)}


def write_best_config(path: Path, entry: dict[str, Any], comment: str) -> Path:
    """Write `entry` as YAML under a `# comment` header line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# {comment}\n" + yaml.safe_dump(entry, sort_keys=False))
    return path


def rebuild_study(configs: list[ConfigSummary], space: SearchSpace) -> optuna.Study:
    """An in-memory Optuna study holding the finished configurations (complete with their value, or failed), in
    order."""
    distributions = space.outer_distributions()
    study = optuna.create_study(direction="minimize", study_name="search")
    for config in configs:
        if config.state not in ("finished", "stopped", "failed"):
            continue
        params, used = {}, {}
        for key, value in config.proposed.flat().items():
            distribution = distributions.get(key)
            # Fixed settings, and a conditional one holding its `otherwise`, are not search dimensions.
            if distribution is not None and in_distribution(distribution, value):
                params[key], used[key] = value, distribution
        complete = config.value is not None
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=used, value=config.value if complete else None,
            state=optuna.trial.TrialState.COMPLETE if complete else optuna.trial.TrialState.FAIL,
            user_attrs={"trial_id": config.config_id, "state": config.state}))
    return study


def write_plots(study: optuna.Study, directory: Path) -> tuple[list[Path], list[str]]:
    """The optimisation history and parameter importances as PNGs; (written paths, why any plot was skipped)."""
    directory.mkdir(parents=True, exist_ok=True)
    written, skipped = [], []
    complete = [trial for trial in study.trials if trial.state == optuna.trial.TrialState.COMPLETE]
    makers = {PLOT_FILES[0]: optuna_plots.plot_optimization_history, PLOT_FILES[1]: optuna_plots.plot_param_importances}
    for name, make in makers.items():
        needed = 1 if name == PLOT_FILES[0] else 2
        if len(complete) < needed:
            skipped.append(f"{name}: needs {needed} completed trials, has {len(complete)}")
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
            axes = make(study)
        figure = axes.figure
        figure.set_size_inches(8, 5)
        figure.tight_layout()
        path = directory / name
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)
    return written, skipped
