"""A round of searches summarised from their exports (`mixbench export --searches`): per search, the recipe's
configuration against the one chosen on validation (its refit), and the selection diagnostics recomputed from the
trial rows. `python -m results.search_rounds EXPORT.csv ... --output DIR` writes summary.json and summary.md.
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path
from typing import Any

from results.output import write_atomic
from search.selection import diagnose, prefer_recipe
from search.space import ProposedConfig
from search.summary import ConfigSummary, TrialSummary, configurations


def summarize_export(path: Path) -> list[dict[str, Any]]:
    """One summary per search in the export at `path`."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    found = []
    for search in (row for row in rows if row["tags.mixbench.kind"] == "search"):
        children = [row for row in rows if row["parent_run_id"] == search["run_id"]]
        configs = configurations(_trial_summaries(children, int(search.get("params.config_seeds") or 1)))
        by_id = {config.config_id: config for config in configs}
        recipe = by_id.get(search.get("tags.recipe_trial_id", ""))
        chosen = by_id.get(search.get("tags.best_trial_id", ""))
        diagnostics = diagnose(configs)
        preferred, why = prefer_recipe(chosen, recipe) if chosen is not None and chosen.value is not None else (None, "")
        found.append({
            "search": search["tags.search_name"], "export": path.name, "dataset": search["tags.dataset"],
            "pred_len": int(search["tags.pred_len"]), "seq_len": search["tags.seq_len"],
            "configurations": len(configs), "trials": sum(len(config.members) for config in configs),
            "recipe": _config_record(recipe), "chosen": _config_record(chosen),
            "chosen_val_loss": _metric(search, "best_val_loss"), "chosen_seq_len": search.get("params.best.seq_len"),
            "chosen_refit": {"test_mse_mean": _metric(search, "refit_test_mse_mean"),
                             "test_mse_std": _metric(search, "refit_test_mse_std"),
                             "test_mae_mean": _metric(search, "refit_test_mae_mean"),
                             "runs": _metric(search, "refit_runs")},
            "selection": diagnostics.as_dict(),
            # what --prefer-recipe would have chosen; its test: the recipe's seeds' (trained in the search), or the
            # chosen configuration's refit
            "prefer_recipe": None if preferred is None else {
                "trial_id": preferred.config_id, "why": why,
                "test_mse_mean": preferred.mean("test_mse") if preferred is recipe else _metric(search,
                                                                                                 "refit_test_mse_mean")},
        })
    return found


def _trial_summaries(children: list[dict[str, str]], seeds: int) -> list[TrialSummary]:
    trials = sorted((row for row in children if row["tags.mixbench.kind"] == "trial"),
                    key=lambda row: (row["tags.trial_id"].rsplit("_", 1)[0], int(row["tags.trial_id"].rsplit("_", 1)[1])))
    summaries = []
    for number, row in enumerate(trials, start=1):
        group, index = row["tags.trial_id"].rsplit("_", 1)
        metrics: dict[str, Any] = {"val_loss_best": _metric(row, "best_val_loss"), "test_mse": _metric(row, "test_mse"),
                                   "test_mae": _metric(row, "test_mae"), "epoch": _metric(row, "epochs_run")}
        if row.get("tags.test_windows"):
            scored, total = row["tags.test_windows"].split("/")
            metrics.update(test_windows=int(scored), test_windows_total=int(total))
        state = row.get("tags.trial_state") or ("failed" if row["status"] == "FAILED" else "stopped")
        summaries.append(TrialSummary(number, row["tags.trial_id"], state, ProposedConfig(None, {}, {}),
                                      {key: value for key, value in metrics.items() if value is not None},
                                      config_id=f"{group}_{int(index) // seeds * seeds}"))
    return summaries


def _metric(row: dict[str, str], name: str) -> float | None:
    text = row.get(f"metrics.{name}", "")
    return float(text) if text else None


def _config_record(config: ConfigSummary | None) -> dict[str, Any] | None:
    if config is None:
        return None
    tests = [member.metrics.get("test_mse") for member in config.members]
    return {"trial_id": config.config_id, "state": config.state, "val_loss_mean": config.value,
            "val_loss_std": config.value_std, "test_mse_mean": config.mean("test_mse"),
            "test_mse_std": statistics.stdev(tests) if None not in tests and len(tests) > 1 else None}  # type: ignore


def markdown(summaries: list[dict[str, Any]]) -> str:
    """A table: per search, the recipe's and the chosen configuration's validation and test, and the diagnostics."""
    header = ("| search | recipe: val / test MSE | chosen: lookback, val / refit test MSE | tested configs | "
              "rank corr. val-test | seed std of val | configs within one seed std | --prefer-recipe: test MSE |")
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    names = [entry["search"] for entry in summaries]
    for entry in summaries:
        recipe, refit, selection = entry["recipe"] or {}, entry["chosen_refit"], entry["selection"]
        # a search run twice under one name is told apart by its export
        name = entry["search"] if names.count(entry["search"]) == 1 else f"{entry['search']} ({entry['export']})"
        lines.append(
            f"| {name} | {_text(recipe.get('val_loss_mean'))} / {_spread(recipe, 'test_mse')} | "
            f"{entry['chosen_seq_len']}, {_text(entry['chosen_val_loss'])} / {_spread(refit, 'test_mse')} | "
            f"{selection['tested']} of {entry['configurations']} | {_text(selection['spearman'], '+.2f')} | "
            f"{_text(selection['seed_std'])} | {selection['within_seed_std']} | {_preferred(entry)} |")
    return "\n".join(lines) + "\n"


def _preferred(entry: dict[str, Any]) -> str:
    preferred = entry["prefer_recipe"]
    if preferred is None:
        return "-"
    which = "recipe" if entry["recipe"] and preferred["trial_id"] == entry["recipe"]["trial_id"] else "chosen"
    return f"{which}, {_text(preferred['test_mse_mean'])}"


def _text(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def _spread(record: dict[str, Any], metric: str) -> str:
    mean, std = record.get(f"{metric}_mean"), record.get(f"{metric}_std")
    return _text(mean) if std is None else f"{_text(mean)} ± {_text(std)}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m results.search_rounds", description=__doc__)
    parser.add_argument("exports", nargs="+", type=Path, help="CSV files written by `mixbench export --searches`")
    parser.add_argument("--output", type=Path, required=True, help="folder for summary.json and summary.md")
    args = parser.parse_args(argv)
    summaries = sorted((entry for path in args.exports for entry in summarize_export(path)),
                       key=lambda entry: (entry["dataset"], entry["search"].rsplit("-", 1)[0], entry["pred_len"],
                                         entry["export"]))
    args.output.mkdir(parents=True, exist_ok=True)
    write_atomic(args.output / "summary.json", json.dumps(summaries, indent=2) + "\n")
    write_atomic(args.output / "summary.md", markdown(summaries))


if __name__ == "__main__":
    main()
