"""How far a search's validation scores can be trusted to choose a configuration: validation against test over the
tested configurations (test is recorded for this diagnosis and never used to choose), the spread of validation
across seeds against the spread across configurations, a one-line warning when validation cannot tell them apart,
and the rule that keeps the recipe unless the best beats it by more than validation's own noise.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass

import pandas as pd

from benchmarks.training.callbacks import is_test_complete
from search.summary import ConfigSummary

# Below this many tested configurations a rank correlation says nothing; the diagnostics then leave it out.
MIN_RANKED = 5
# A rank correlation of validation against test below this ranks configurations little better than chance.
WEAK_RANK_CORRELATION = 0.3


@dataclass(frozen=True)
class SelectionDiagnostics:
    """What a search's selection rests on (see the module docstring); None where too few configurations had it.

    tested: configurations every seed of which was tested, after its last epoch or on its best weights when ASHA
    stopped it (its validation loss is then of fewer epochs too). spearman: the rank correlation of their mean
    validation loss and mean test MSE. test_complete: whether those tests covered every test window.
    seed_std: the median, over configurations trained with several seeds, of their seeds' validation std.
    config_iqr: the interquartile range of the configurations' mean validation losses (robust to one that
    diverged). within_seed_std: configurations whose mean validation loss lies within seed_std of the best one's.
    """

    tested: int
    spearman: float | None
    test_complete: bool
    seed_std: float | None
    config_iqr: float | None
    within_seed_std: int
    warning: str | None

    def metrics(self) -> dict[str, float]:
        """The parent run's `selection_*` metrics (those that exist)."""
        values = {"selection_tested_configs": self.tested, "selection_spearman_val_test": self.spearman,
                  "selection_seed_val_std": self.seed_std, "selection_config_val_iqr": self.config_iqr,
                  "selection_within_seed_std": self.within_seed_std if self.seed_std is not None else None}
        return {key: float(value) for key, value in values.items() if value is not None}

    def lines(self) -> list[str]:
        """What the search prints under its table."""
        coverage = "" if self.test_complete else " (tests capped by --limit-eval-batches)"
        spearman = (f"rank correlation of validation and test MSE {self.spearman:+.2f} over {self.tested} tested "
                    f"configurations{coverage}" if self.spearman is not None else
                    f"{self.tested} tested configurations, too few (< {MIN_RANKED}) to rank validation against test")
        lines = [f"selection: {spearman}"]
        if self.seed_std is not None:
            across = "-" if self.config_iqr is None else f"{self.config_iqr:.4g}"
            lines.append(f"selection: validation spread across seeds {self.seed_std:.4g} (median std) vs across "
                         f"configurations {across} (interquartile range); {self.within_seed_std} configuration(s) "
                         "within one seed std of the best")
        if self.warning:
            lines.append(f"warning: {self.warning}")
        return lines

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def diagnose(configs: list[ConfigSummary]) -> SelectionDiagnostics:
    """The diagnostics of a search's configurations."""
    tested = [config for config in configs if config.state in ("finished", "stopped") and config.value is not None
              and config.mean("test_mse") is not None]
    spearman = None
    if len(tested) >= MIN_RANKED:
        validation = pd.Series([config.value for config in tested], dtype=float)
        test = pd.Series([config.mean("test_mse") for config in tested], dtype=float)
        correlation = validation.rank().corr(test.rank())
        spearman = None if pd.isna(correlation) else float(correlation)
    test_complete = all(is_test_complete(int(member.metrics.get("test_windows", 0)),
                                         int(member.metrics.get("test_windows_total", 1)))
                        for config in tested for member in config.members)
    spreads = [config.value_std for config in configs if config.value_std is not None]
    seed_std = statistics.median(spreads) if spreads else None
    values = sorted(config.value for config in configs if config.value is not None)  # type: ignore[type-var]
    config_iqr = float(pd.Series(values).quantile(0.75) - pd.Series(values).quantile(0.25)) if len(values) > 1 else None
    within = sum(value - values[0] <= seed_std for value in values[1:]) if seed_std is not None and values else 0
    warnings = []
    if seed_std is not None and within:
        warnings.append(f"validation cannot tell the best configuration from {within} other(s): their mean "
                        f"validation losses lie within one seed std ({seed_std:.4g}) of it")
    if spearman is not None and spearman < WEAK_RANK_CORRELATION:
        warnings.append(f"validation ranks the tested configurations poorly against test (rank correlation "
                        f"{spearman:+.2f} < {WEAK_RANK_CORRELATION})")
    return SelectionDiagnostics(tested=len(tested), spearman=spearman, test_complete=test_complete,
                                seed_std=seed_std, config_iqr=config_iqr, within_seed_std=within,
                                warning="; ".join(warnings) or None)


def prefer_recipe(best: ConfigSummary, recipe: ConfigSummary | None) -> tuple[ConfigSummary, str]:
    """`recipe` instead of `best` unless best's mean validation loss lies below the recipe's by more than one
    standard error of their difference (each mean's seed std / sqrt(seeds)); the choice and why, in one line."""
    if recipe is None or recipe.value is None:
        return best, "the recipe's configuration has no validation loss to compare with; the best is chosen"
    if recipe is best:
        return best, "the recipe's configuration is the best on validation"
    if best.value_std is None or recipe.value_std is None:
        return best, "one standard error needs several seeds per configuration (--config-seeds); the best is chosen"
    error = math.sqrt(best.value_std ** 2 / len(best.members) + recipe.value_std ** 2 / len(recipe.members))
    margin = recipe.value - best.value  # type: ignore[operator]
    if margin > error:
        return best, (f"the best ({best.config_id}) beats the recipe's validation loss by {margin:.4g}, more than one "
                      f"standard error ({error:.4g})")
    return recipe, (f"kept the recipe: the best ({best.config_id}) beats its validation loss by {margin:.4g}, within "
                    f"one standard error ({error:.4g})")
