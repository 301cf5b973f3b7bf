"""What a finished search found: its trials ranked by the search metric, the table of the top ones, the best config
as a YAML file the benchmark command loads (`--configs FILE`), and the Optuna study rebuilt from the trials for plots.
"""
from __future__ import annotations

import math
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
from search.groups import MEMBERS_KEY, member_id
from search.progress import member_states, trial_state
from search.space import EXPERIMENT_KEY, ProposedConfig, SearchSpace
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

    @property
    def value(self) -> float | None:
        """The search metric (best validation loss so far), or None if the trial never reported a finite one."""
        value = self.metrics.get(SEARCH_METRIC)
        return float(value) if value is not None and math.isfinite(value) else None


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
        for index, (member, state) in enumerate(zip(trial.config[MEMBERS_KEY], member_states(trial))):
            metrics = dict(outcomes[index]) if index < len(outcomes) else {}
            summaries.append(TrialSummary(len(summaries) + 1, member_id(trial.trial_id, index), state,
                                          space.decode(member), metrics, member.get(EXPERIMENT_KEY), trial.trial_id))
    return summaries


def trial_number(trial: Trial) -> int:
    """1 for the first proposed trial, 2 for the next ...: Tune's experiment tag starts with its trial counter
    (the ids are random, and a resumed experiment lists its trials by their last result).
    """
    return int(trial.experiment_tag.split("_", 1)[0])


def ranked(summaries: list[TrialSummary]) -> list[TrialSummary]:
    """Trials with a search-metric value, best (lowest) first."""
    return sorted((s for s in summaries if s.value is not None), key=lambda s: s.value)  # type: ignore[arg-type, return-value]


def top_table(summaries: list[TrialSummary], limit: int = 10) -> str:
    """A fixed-width table of the best `limit` trials: metrics, then the proposed settings. A test capped by
    limit_eval_batches is starred and explained under the table."""
    rows = ranked(summaries)[:limit]
    header = (f"{'rank':>4}  {'trial':<16} {'state':<9} {'epochs':>6} {SEARCH_METRIC:>13} {'test_mse':>10} "
              f"{'test_mae':>10}  config")
    lines = [header]
    capped: set[str] = set()
    for rank, summary in enumerate(rows, start=1):
        metrics = dict(summary.metrics)
        star = " "
        if "test_mse" in metrics and not is_test_complete(int(metrics.get("test_windows", 0)),
                                                            int(metrics.get("test_windows_total", 1))):
            star = "*"
            capped.add(f"{int(metrics['test_windows'])} of {int(metrics['test_windows_total'])}")
        test = [f"{metrics[name]:9.4f}{star}" if name in metrics else f"{'-':>10}" for name in ("test_mse", "test_mae")]
        config = " ".join(f"{key.split('.')[-1]}={_short(value)}" for key, value in summary.proposed.flat().items())
        lines.append(f"{rank:>4}  {summary.trial_id:<16} {summary.state:<9} {int(metrics.get('epoch', 0)):>6} "
                     f"{summary.value:13.4f} {test[0]} {test[1]}  {config}")
    if capped:
        lines.append(f"* test on {', '.join(sorted(capped))} test windows only (--limit-eval-batches, the CPU "
                     "default): a smoke number, not a result; the best trial is tested on every window below")
    return "\n".join(lines)


def best_test_tags(windows: int, total: int) -> dict[str, str]:
    """The parent run's tags saying how many test windows its best_test_* metrics cover."""
    return {f"best_{key}": value for key, value in coverage_tags(windows, total).items()}


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def best_config(best: TrialSummary, experiment: Experiment) -> dict[str, Any]:
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


def rebuild_study(summaries: list[TrialSummary], space: SearchSpace) -> optuna.Study:
    """An in-memory Optuna study holding the finished trials (complete with their value, or failed), in order."""
    distributions = space.outer_distributions()
    study = optuna.create_study(direction="minimize", study_name="search")
    for summary in summaries:
        if summary.state not in ("finished", "stopped", "failed"):
            continue
        params, used = {}, {}
        for key, value in summary.proposed.flat().items():
            distribution = distributions.get(key)
            # Fixed settings, and a conditional one holding its `otherwise`, are not search dimensions.
            if distribution is not None and _contains(distribution, value):
                params[key], used[key] = value, distribution
        complete = summary.value is not None and summary.state != "failed"
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=used, value=summary.value if complete else None,
            state=optuna.trial.TrialState.COMPLETE if complete else optuna.trial.TrialState.FAIL,
            user_attrs={"trial_id": summary.trial_id, "state": summary.state}))
    return study


def _contains(distribution: optuna.distributions.BaseDistribution, value: Any) -> bool:
    try:
        return distribution._contains(distribution.to_internal_repr(value))
    except (ValueError, TypeError):
        return False


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
