"""Selection that cannot fall below the hand-tuned config and is robust to one lucky seed (issue 22): the recipe's
values are the first configuration of every shipped space, each configuration trains as one member per seed and is
told to Optuna as their mean, and the diagnostics rank validation against test and compare seed and config spreads.
"""
from __future__ import annotations

import json
import math
import re
import statistics
import subprocess
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest

from benchmarks.data.files import resolve_dataset
from benchmarks.errors import SpaceError
from benchmarks.experiment import resolve_experiment
from results import search_rounds
from search.groups import MEMBERS_KEY, SEEDS_KEY, GroupPlan, GroupSearcher
from search.selection import MIN_RANKED, diagnose
from search.space import EXPERIMENT_KEY, BoundSpace, ProposedConfig, default_space_path, load_space
from search.summary import TrialSummary, configurations, ranked, top_table
from tests.search.test_fused_search import FUSED_SPACE, SHAPE_KEYS
from tests.search.test_search import CLI, REPO_ROOT, kind, store

SEED = 5


def bound_space(data_dir: Path, text: str | None, tmp_path: Path, model: str = "mixmamba",
                dataset: str = "ETTh1") -> BoundSpace:
    if text is None:
        space = load_space(default_space_path(model), model)
    else:
        path = tmp_path / "space.yaml"
        path.write_text(text)
        space = load_space(path, model)
    return BoundSpace(space, resolve_experiment(model, resolve_dataset(dataset, str(data_dir)), pred_len=96,
                                                seed=SEED))


@pytest.mark.parametrize("model", ["mixmamba", "patchtst", "itransformer", "dlinear"])
@pytest.mark.parametrize("dataset", ["weather", "ETTh1"])
def test_every_shipped_space_starts_from_its_recipe(shared_data_dir: Path, tmp_path: Path, model: str,
                                                    dataset: str) -> None:
    bound = bound_space(shared_data_dir, None, tmp_path, model, dataset)
    point, differing = bound.recipe_point()
    assert differing == []
    proposal = bound(optuna.trial.FixedTrial(point))
    base = bound.base.settings()
    # every searched setting takes the recipe's value, and the experiment is the recipe's
    assert point and all(base[name] == value for name, value in point.items())
    assert proposal[EXPERIMENT_KEY].settings() == base


def test_a_recipe_outside_the_space_is_named(shared_data_dir: Path, tmp_path: Path) -> None:
    narrow = FUSED_SPACE.replace("choices: [0.001, 0.01, 1.0e+30]", "choices: [0.01, 1.0e+30]")
    with pytest.raises(SpaceError, match=r"recipe's train.learning_rate 0.001 lies outside choices \[0.01, 1e\+30\]"):
        bound_space(shared_data_dir, narrow, tmp_path).recipe_point()
    off_grid = FUSED_SPACE.replace("stride: {low: 8, high: patch_len, step: 8}", "stride: {low: 6, high: patch_len, step: 4}")
    with pytest.raises(SpaceError, match="recipe's model.stride 8 lies outside int"):
        bound_space(shared_data_dir, off_grid, tmp_path).recipe_point()
    # a `divides` filter gives the parameter its per-value Optuna name, which the point uses
    divides = FUSED_SPACE.replace("  d_model: 8\n", "  d_model: {choices: [8, 64]}\n").replace(
        "patch_len: {choices: [16, 24]}", "patch_len: {choices: [8, 16, 24, 32], divides: d_model}")
    point, _ = bound_space(shared_data_dir, divides, tmp_path).recipe_point()
    assert point["model.d_model"] == 64 and point["model.patch_len@d_model=64"] == 16


def test_each_configuration_trains_one_member_per_seed_and_optuna_is_told_their_mean(shared_data_dir: Path,
                                                                                    tmp_path: Path) -> None:
    bound = bound_space(shared_data_dir, FUSED_SPACE, tmp_path)
    recipe, differing = bound.recipe_point()
    # the space fixes d_model 8 and batch 16 where the ETTh1 recipe has 64 and 32
    assert differing == ["model.d_model 8 (recipe: 64)", "train.batch_size 16 (recipe: 32)"]
    searcher = GroupSearcher(bound, GroupPlan(trials=3, members=4, seeds=2), "val_loss_best", seed=SEED,
                             startup_groups=2, first_point=recipe)
    assert searcher.startup_trials == 4
    first, second = searcher.suggest("g0"), searcher.suggest("g1")
    assert searcher.suggest("g2") is GroupSearcher.FINISHED
    assert first[SEEDS_KEY] == 2 and [len(group[MEMBERS_KEY]) for group in (first, second)] == [4, 2]
    members = first[MEMBERS_KEY]
    assert [member[EXPERIMENT_KEY].seed for member in members] == [SEED, SEED + 1, SEED, SEED + 1]
    assert all(members[0][key] == member[key] for member in members for key in SHAPE_KEYS)
    # seeds of one configuration differ only in their seed; the first configuration is the recipe's
    assert members[0][EXPERIMENT_KEY].with_seed(0) == members[1][EXPERIMENT_KEY].with_seed(0)
    assert members[2]["model.dropout"] != members[0]["model.dropout"]
    assert all(members[0][name] == value for name, value in recipe.items())
    searcher.on_trial_complete("g0", {MEMBERS_KEY: [
        {"state": "finished", "val_loss_best": 0.5}, {"state": "stopped", "val_loss_best": 0.7},
        {"state": "finished", "val_loss_best": 0.4}, {"state": "failed", "error": "NonFiniteLossError: ..."}]})
    searcher.on_trial_complete("g1", None, error=True)
    assert [(trial.state, trial.value) for trial in searcher.study.trials] == [
        (optuna.trial.TrialState.COMPLETE, pytest.approx(0.6)), (optuna.trial.TrialState.FAIL, None),
        (optuna.trial.TrialState.FAIL, None)]
    with pytest.raises(ValueError, match="whole configurations"):
        GroupPlan(trials=3, members=5, seeds=2)


def summary(config: int, seed: int, state: str, value: float | None, test: float | None,
            windows: int = 100) -> TrialSummary:
    metrics = {} if value is None else {"val_loss_best": value, "epoch": 3}
    if test is not None:
        metrics.update(test_mse=test, test_mae=test / 2, test_windows=windows, test_windows_total=100)
    return TrialSummary(config * 2 + seed + 1, f"g{config}_{seed}", state, ProposedConfig(None, {"x": config}, {}),
                        metrics, config_id=f"g{config}_0")


def test_diagnostics_rank_validation_against_test_and_compare_seed_and_config_spreads() -> None:
    validation = [0.40, 0.405, 0.45, 0.50, 0.52, 0.60]
    test = [0.46, 0.44, 0.47, 0.55, 0.50, 0.58]
    summaries = []
    for config, (value, score) in enumerate(zip(validation, test)):
        summaries += [summary(config, 0, "finished", value - 0.005, score - 0.01),
                      summary(config, 1, "finished", value + 0.005, score + 0.01)]
    summaries += [summary(6, 0, "failed", None, None), summary(6, 1, "finished", 0.1, 0.1),  # a failed seed
                  summary(7, 0, "stopped", 0.7, 0.7), summary(7, 1, "stopped", 0.72, 0.7),  # stopped by ASHA, tested
                  summary(8, 0, "stopped", 0.8, None), summary(8, 1, "stopped", 0.8, None)]  # stopped untested
    configs = configurations(summaries)
    assert [config.config_id for config in ranked(configs)] == [f"g{n}_0" for n in (0, 1, 2, 3, 4, 5, 7, 8)]
    diagnostics = diagnose(configs)
    assert diagnostics.tested == 7 and diagnostics.test_complete
    # test ranks 2 1 3 5 4 6 7 against validation ranks 1 .. 7: 1 - 6 * sum(d^2) / (n (n^2 - 1))
    assert diagnostics.spearman == pytest.approx(1 - 6 * 4 / (7 * 48))
    assert diagnostics.seed_std == pytest.approx(statistics.stdev([-0.005, 0.005]))
    # quartiles of the 8 ranked configurations, interpolated: 0.6275 - 0.4387
    assert diagnostics.config_iqr == pytest.approx((0.60 + 0.25 * (0.71 - 0.60)) - (0.405 + 0.75 * (0.45 - 0.405)))
    assert diagnostics.within_seed_std == 1  # 0.405 lies within 0.0071 of 0.40
    assert diagnostics.warning.startswith("validation cannot tell the best configuration from 1 other(s)")
    assert diagnostics.metrics()["selection_spearman_val_test"] == pytest.approx(diagnostics.spearman)
    table = top_table(configs, recipe_id="g3_0")
    assert "+- seeds" in table.splitlines()[0] and "(recipe) x=3" in table
    assert math.isclose(float(table.splitlines()[1].split()[4]), 0.40)

    # validation that ranks configurations against test at random warns, and too few configurations give no rank
    shuffled = [summary(n, 0, "finished", value, score, windows=10)
                for n, (value, score) in enumerate(zip(validation, reversed(test)))]
    weak = diagnose(configurations(shuffled))
    assert weak.spearman < 0 and not weak.test_complete and weak.seed_std is None
    assert "poorly against test" in weak.warning and "capped" in "\n".join(weak.lines())
    few = diagnose(configurations(shuffled[:MIN_RANKED - 1]))
    assert few.spearman is None and few.warning is None


@pytest.mark.slow  # a search in a subprocess
def test_a_seeded_search_starts_from_the_recipe_and_logs_its_diagnostics(shared_data_dir: Path,
                                                                        tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(FUSED_SPACE.replace("1.0e+30", "0.003"))
    args = ["--dataset", "ETTh1", "--model", "mixmamba", "--trials", "3", "--epochs", "2", "--seed", str(SEED),
            "--space", str(space), "--data-dir", str(shared_data_dir), "--limit-train-batches", "2",
            "--limit-eval-batches", "1", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--storage-path", str(tmp_path / "ray"), "--config-seeds", "2", "--max-concurrent", "1", "--prefer-recipe"]
    done = subprocess.run(CLI + args, check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    output = done.stdout
    assert ("fused groups: 2 trials each, 3 groups (each configuration's 2 seeds as one array; off: auto fuses on "
            "GPUs only)") in output
    assert ("first configuration: the recipe's (MixMamba ETT_script/mixmamba_ETTh1.sh); the space holds "
            "model.d_model 8 (recipe: 64), train.batch_size 16 (recipe: 32)") in output
    assert "(recipe)" in output and re.search(r"selection: \d tested configurations, too few", output)

    _, runs = store(tmp_path)
    (parent,) = kind(runs, "search")
    assert parent.info.status == "FINISHED" and parent.data.params["config_seeds"] == "2"
    children = kind(runs, "trial")
    by_config: dict[str, list] = {}
    for run in children:
        by_config.setdefault(run.data.tags["trial_id"].rsplit("_", 1)[0], []).append(run)
    assert len(by_config) == 3 and all(len(members) == 2 for members in by_config.values())
    recipe_group = parent.data.tags["recipe_trial_id"].rsplit("_", 1)[0]
    recipe_runs = by_config[recipe_group]
    assert sorted(run.data.params["train.learning_rate"] for run in recipe_runs) == ["0.001", "0.001"]
    means = []
    for members in by_config.values():
        assert sorted(run.data.tags["seed"] for run in members) == [str(SEED), str(SEED + 1)]
        assert len({run.data.tags["trial_state"] for run in members}) == 1  # ASHA stops a configuration's seeds together
        means.append(statistics.fmean(run.data.metrics["best_val_loss"] for run in members))
    recipe_mean = statistics.fmean(run.data.metrics["best_val_loss"] for run in recipe_runs)
    choice = parent.data.tags["selection_choice"]
    assert parent.data.tags["selection_rule"] == "prefer_recipe" and f"chosen by --prefer-recipe: {choice}" in output
    kept = choice.startswith("kept the recipe") or choice.endswith("is the best on validation")
    assert parent.data.metrics["best_val_loss"] == pytest.approx(recipe_mean if kept else min(means))
    assert parent.data.metrics["selection_tested_configs"] >= 1 and "selection_seed_val_std" in parent.data.metrics
    experiment_dir = tmp_path / "ray" / f"mixmamba-ETTh1-pred96-seed{SEED}"
    assert json.loads((experiment_dir / "selection" / "selection.json").read_text())["seed_std"] == pytest.approx(
        parent.data.metrics["selection_seed_val_std"])
    state_file = max(experiment_dir.glob("searcher-state-*.pkl"), key=lambda path: path.name)
    told = sorted(trial["value"] for trial in json.loads(state_file.read_text())["trials"]
                  if trial["state"] == "COMPLETE")
    assert told == pytest.approx(sorted(means))

    # the export of the search rebuilds the same round summary: recipe, choice and diagnostics
    export = tmp_path / "searches.csv"
    exported = subprocess.run(CLI[:-1] + ["export", "--searches", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                                          "--output", str(export)], check=False, cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=300)
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert "7 runs: 1 search, 6 trial" in exported.stderr
    search_rounds.main([str(export), "--output", str(tmp_path / "round")])
    (entry,) = json.loads((tmp_path / "round" / "summary.json").read_text())
    assert entry["recipe"]["trial_id"] == parent.data.tags["recipe_trial_id"]
    assert entry["recipe"]["val_loss_mean"] == pytest.approx(parent.data.metrics["recipe_val_loss"])
    assert entry["chosen_val_loss"] == pytest.approx(parent.data.metrics["best_val_loss"])
    assert entry["selection"]["seed_std"] == pytest.approx(parent.data.metrics["selection_seed_val_std"])
    assert "| mixmamba-ETTh1-pred96-seed5 |" in (tmp_path / "round" / "summary.md").read_text()
    no_mode = subprocess.run(CLI[:-1] + ["export", "--output", str(export)], check=False, cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=120)
    assert no_mode.returncode == 2 and "give either --suite NAME or --searches" in no_mode.stderr


def test_the_progress_line_names_the_best_configuration_by_its_seeds_mean() -> None:
    from search.progress import ProgressLine

    outcomes = [{"state": "running", "val_loss_best": value} for value in (0.5, 0.7, 0.4)] + [{"state": "running"}]
    group = SimpleNamespace(trial_id="g0", status="RUNNING", config={MEMBERS_KEY: [{}] * 4, SEEDS_KEY: 2},
                            last_result={MEMBERS_KEY: outcomes})
    text, _ = ProgressLine("s", 4, None).line([group])
    # the second configuration's 0.4 is one seed's, and its other seed has no value yet
    assert "4 running" in text and "best val_loss_best 0.6000 (trial g0_0)" in text


@pytest.mark.slow  # starts Ray
def test_asha_stops_a_configurations_seeds_together_on_their_mean(tmp_path: Path) -> None:
    import ray

    from benchmarks.training.engine import NonFiniteLossError
    from search.member_rungs import GroupRungs, RungRecorder, rungs_actor

    ray.init(num_cpus=1, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        actor = rungs_actor("selection-test", 8, tmp_path)
        ray.get(actor.decide_many.remote([("earlier", 1, 0.30), ("other", 1, 0.31), ("third", 1, 0.32)]))
        # members 0-1 train configuration a, 2-3 configuration b, 4-5 configuration c (2 seeds each)
        rungs = GroupRungs(actor, {0: "a", 1: "a", 2: "b", 3: "b", 4: "c", 5: "c"})
        recorders = [RungRecorder(rungs, index) for index in range(6)]
        for index, value in enumerate([0.20, 0.36, 0.50, 0.55, 0.28, 0.30]):
            recorders[index].on_epoch(SimpleNamespace(val_loss=value))
        # a's mean 0.28 and c's 0.29 lie in the best quarter of the rung at epoch 1; b's 0.525 does not
        assert rungs.decide(1) == {2, 3} and rungs.stopped == {2, 3}
        recorders[4].on_failure(NonFiniteLossError("diverged"))  # c's first seed diverges at epoch 2
        for index, value in ((0, 0.19), (1, 0.35), (5, 0.27)):
            recorders[index].on_epoch(SimpleNamespace(val_loss=value))
        assert rungs.decide(2) == {5}  # c has failed: its other seed stops; epoch 2 is no rung for a
        recorders[0].on_epoch(SimpleNamespace(val_loss=0.18))  # a's second seed left (patience) after epoch 2
        assert rungs.decide(3) == set()
        recorders[0].on_epoch(SimpleNamespace(val_loss=0.17))
        assert rungs.decide(4) == set()
        # at the rung of epoch 4, a counts with its departed seed's last loss: (0.17 + 0.35) / 2
        saved = json.loads((tmp_path / "member_rungs" / "rungs.json").read_text())
        assert saved["4"]["a"][0] == pytest.approx(0.26)
    finally:
        ray.shutdown()


def test_diagnostics_of_one_configuration_with_seeds_print() -> None:
    configs = configurations([summary(0, 0, "finished", 0.5, 0.4), summary(0, 1, "finished", 0.52, 0.41)])
    diagnostics = diagnose(configs)
    assert diagnostics.config_iqr is None and diagnostics.seed_std == pytest.approx(statistics.stdev([0.5, 0.52]))
    assert "across configurations - (interquartile range); 0 configuration(s)" in "\n".join(diagnostics.lines())


def test_prefer_recipe_keeps_the_recipe_within_one_standard_error() -> None:
    from benchmarks.errors import SettingError
    from search.config import SearchConfig, check_config
    from search.selection import prefer_recipe

    recipe, close, far = configurations([
        summary(0, 0, "finished", 0.500, 0.4), summary(0, 1, "finished", 0.504, 0.4),  # mean 0.502, std 0.0028
        summary(1, 0, "finished", 0.498, 0.5), summary(1, 1, "finished", 0.502, 0.5),  # mean 0.500: 0.002 better
        summary(2, 0, "finished", 0.490, 0.5), summary(2, 1, "finished", 0.494, 0.5)])  # mean 0.492: 0.010 better
    # one standard error of the difference: sqrt(2 * 0.0028^2 / 2) = 0.0028
    chosen, why = prefer_recipe(close, recipe)
    assert chosen is recipe and why.startswith("kept the recipe: the best (g1_0) beats its validation loss by 0.002,")
    chosen, why = prefer_recipe(far, recipe)
    assert chosen is far and "more than one standard error (0.002828)" in why
    assert prefer_recipe(recipe, recipe)[0] is recipe
    (single,) = configurations([summary(3, 0, "finished", 0.3, 0.3)])
    assert prefer_recipe(single, recipe)[0] is single  # one seed: no standard error, the best stays
    with pytest.raises(SettingError, match="needs the recipe trial and --config-seeds 2 or more"):
        check_config(SearchConfig(dataset="weather", prefer_recipe=True))
