"""Run a search: Optuna (seeded TPE, define-by-run space) proposes trials, Ray Tune runs them packed onto the cluster's
CPUs/GPU shares, ASHA stops weak ones early, MLflow records a parent run and one child run per trial; `resume=True`
continues an interrupted search from its Tune experiment folder without losing or repeating finished trials.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import statistics
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
import ray
from ray import tune
from ray.tune import ExperimentAnalysis
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

from benchmarks import ray_session
from benchmarks.data.files import resolve_data_dir, resolve_dataset
from benchmarks.errors import SettingError, SpaceError
from benchmarks.experiment import Experiment, resolve_experiment
from benchmarks.models.registry import model_classes
from benchmarks.tracking.credentials import move_credentials_to_env
from benchmarks.tracking.store import TrackingStore
from benchmarks.tracking.writer import protocol_tag
from benchmarks.worker_share import WorkerShare
from search import summary as found
from search.config import DEFAULT_SEQ_LEN, SearchConfig, check_config, default_name, parse_fuse, resolve_resources
from search.full_evaluation import evaluate_saved_weights
from search.folder_trust import DigestKeeper, check_before_restore, record_digests
from search.group_size import choose_group_size
from search.group_trial import run_group
from search.groups import GroupPlan, GroupSearcher
from search.member_rungs import actor_name, rungs_actor
from search.parent_run import ParentRun
from search.progress import ProgressLine
from search.refit import refit, refit_seeds
from search.selection import SelectionDiagnostics, diagnose, prefer_recipe
from search.space import EXPERIMENT_KEY, INVALID_KEY, BoundSpace, SearchSpace, default_space_path, load_space
from search.trial import FEATURES, SEARCH_METRIC, TrialSetup, run_trial, trial_dirname
from search.trial_logger import TrialLogger, error_line, reached_metrics
from search.trial_runs import TRIAL_ID_TAG, TrialRuns, TrialTracking

STATE_FILE = "mixbench_search.json"
# Below the search's folder: its top-level JSON files are what --resume checks against recorded digests.
SELECTION_FILE = Path("selection") / "selection.json"
PROPOSAL_CHECKS = 32


@dataclass
class SearchOutcome:
    """What a search ended with; `interrupted` means Ctrl+C stopped it and `--resume` continues it."""

    name: str
    experiment_dir: Path
    parent_run_id: str
    interrupted: bool
    counts: dict[str, int] = field(default_factory=dict)
    best_trial_id: str | None = None
    best_value: float | None = None
    best_config_path: Path | None = None
    table: str = ""
    refit: Any = None
    notes: list[str] = field(default_factory=list)
    best_test: dict[str, float] | None = None   # the best trial's weights tested on every window (capped trials)
    open_runs: str = ""   # how to see the runs: the tracking server's URL, or the `mixbench ui` command for a local store
    selection: SelectionDiagnostics | None = None
    recipe_value: float | None = None   # the recipe's configuration's search metric, when it was run


def run_search(config: SearchConfig) -> SearchOutcome:
    """Run (or with `config.resume`, continue) the search `config` describes; see the module docstring.

    Raises a MixbenchError for bad input before any trial starts. Prints the experiment name and folder first (so the
    search can be resumed), a live status line, then the top trials, the best-config path and refit results.
    """
    check_config(config)
    config = dataclasses.replace(config, fuse=parse_fuse(config.fuse))
    # Stored (state file, Tune's pickles) without user-info; the credentials travel in the environment only.
    config = dataclasses.replace(config, tracking_uri=move_credentials_to_env(config.tracking_uri))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data = resolve_dataset(config.dataset, config.data_dir, verify=config.verify)
    model_classes(config.model)
    name = config.name or default_name(data.name, config.model, config.pred_len, config.seed)
    storage = Path(config.storage_path or "ray_results").expanduser().resolve()
    experiment_dir = storage / name
    state_path = experiment_dir / STATE_FILE
    saved = None
    if config.resume:
        if not state_path.is_file():
            raise SettingError(f"{{setting}}: no search to resume at {experiment_dir}; start it without resume, or "
                               "pass the name / storage path it was started with", setting="resume")
        check_before_restore(experiment_dir, plain=(STATE_FILE,))
        saved = json.loads(state_path.read_text())
        config = _resumed_config(config, saved["config"])
    elif experiment_dir.exists():
        raise SettingError(f"a search already exists at {experiment_dir}; resume it or pass another {{setting}}",
                           setting="name")
    store = TrackingStore.resolve(config.tracking_uri)
    config = dataclasses.replace(config, data_dir=str(resolve_data_dir(config.data_dir).resolve()),
                                 tracking_uri=store.uri)
    space = _load_space(config)

    started_ray = ray_session.connect(config.address)
    try:
        cpus, gpus = ray_session.cluster_resources()
        config = resolve_resources(config, cpus, gpus)
        base = resolve_experiment(config.model, data, pred_len=config.pred_len, seq_len=DEFAULT_SEQ_LEN,
                                  features=FEATURES, seed=config.seed, settings={
                                      "train.epochs": config.epochs,
                                      "train.limit_train_batches": config.limit_train_batches or None,
                                      "train.limit_eval_batches": config.limit_eval_batches or None})
        bound = BoundSpace(space, base)
        proposals = _check_proposals(bound)
        size = choose_group_size(config.fuse, trials=config.trials, gpu_share=config.gpus_per_trial,
                                 proposals=proposals, seeds=config.config_seeds)
        if size.members > 1 and any(experiment.train.compile for experiment in proposals):
            # --fuse off cannot help when --config-seeds already groups each configuration's seeds
            remedy = ("fix train.compile: false in the space (--config-seeds trains a configuration's seeds as one "
                      "group)" if config.config_seeds > 1 else "pass --fuse off or fix train.compile: false in the space")
            raise SettingError("{setting} groups train as one CUDA graph, which train.compile cannot join; " + remedy,
                               setting="fuse")
        config = dataclasses.replace(config, fuse=size.members)
        return _run(config, store, name, experiment_dir, bound, saved, size.reason)
    finally:
        if started_ray:
            ray.shutdown()


def _resumed_config(given: SearchConfig, saved: dict[str, Any]) -> SearchConfig:
    """The saved settings of the search, except where to run (--address) and how many refit seeds."""
    # A search saved before fused groups existed ran one trial per Tune trial.
    # Nor recipe trials or seeds per configuration (issue 22).
    config = SearchConfig(**{"fuse": 1, "config_seeds": 1, "recipe_trial": False, "prefer_recipe": False, **saved,
                             "resume": True, "address": given.address, "refit_seeds": given.refit_seeds})
    defaults = SearchConfig(dataset=given.dataset)
    differing = [key for key in asdict(given) if key not in ("resume", "address", "refit_seeds", "dataset")
                 and getattr(given, key) != getattr(defaults, key) and getattr(given, key) != saved.get(key)]
    if differing:
        print(f"note: --resume keeps the search's saved settings; ignoring {', '.join(differing)}")
    return config


def _load_space(config: SearchConfig) -> SearchSpace:
    space = load_space(config.space or default_space_path(config.model), config.model)
    if config.search_seq_len:
        space = space.with_seq_len_choices(list(config.search_seq_len))
    return space


def _run(config: SearchConfig, store: TrackingStore, name: str, experiment_dir: Path, bound: BoundSpace,
         saved: dict[str, Any] | None, fuse_reason: str) -> SearchOutcome:
    space, base = bound.space, bound.base
    plan = GroupPlan(trials=config.trials, members=int(config.fuse), seeds=config.config_seeds)
    fused = plan.members > 1
    recipe_point, recipe_note = _recipe_point(config, bound)
    searched_seq_len = space.searches_seq_len
    trials_log_themselves = store.is_server
    if saved is None:
        parent = ParentRun.create(
            store, config.experiment, name, dataset=base.dataset, model=config.model,
            pred_len=config.pred_len, seq_len=None if searched_seq_len else DEFAULT_SEQ_LEN, seed=config.seed,
            params={**space.describe(), "space.file": space.path,
                    "trials": config.trials, "epochs": config.epochs, "time_budget_s": config.time_budget_s,
                    "scheduler": config.scheduler, "cpus_per_trial": config.cpus_per_trial,
                    "gpus_per_trial": config.gpus_per_trial, "max_concurrent": config.max_concurrent,
                    "limit_train_batches": config.limit_train_batches or None,
                    "limit_eval_batches": config.limit_eval_batches or None, "max_failures": config.max_failures,
                    "fuse": plan.members, "config_seeds": plan.seeds, "recipe_trial": recipe_point is not None,
                    "prefer_recipe": config.prefer_recipe},
        )
        experiment_dir.mkdir(parents=True, exist_ok=True)
        stored = asdict(dataclasses.replace(config, resume=False, address=None, refit_seeds=0))
        (experiment_dir / STATE_FILE).write_text(json.dumps({"parent_run_id": parent.run_id, "config": stored},
                                                            indent=2))
    else:
        parent = ParentRun(store, config.experiment, saved["parent_run_id"])
        parent.reopen()
    print(f"search {name}: {config.model} on {base.dataset}, pred_len {config.pred_len}, {config.trials} trials x "
          f"{config.epochs} epochs, {config.scheduler}, budget {config.time_budget_s or 'none'} s, "
          f"{config.cpus_per_trial:g} CPU + {config.gpus_per_trial:g} GPU per {'group' if fused else 'trial'}\n"
          f"  fused groups: {f'{plan.members} trials each, {plan.groups} groups' if fused else 'none'} "
          f"({fuse_reason})\n"
          f"  first configuration: {recipe_note}\n"
          f"  folder {experiment_dir} (to resume: the same command with --resume)\n"
          f"  MLflow {store.redacted}, experiment {config.experiment}, parent run {parent.run_id}",
          flush=True)

    child_tags = {"search_name": name}
    if searched_seq_len:
        child_tags["protocol"] = protocol_tag(FEATURES, None)
    tracking = TrialTracking(store=store, experiment=config.experiment, parent_run_id=parent.run_id, tags=child_tags)
    share = WorkerShare(cpus=config.cpus_per_trial, gpus=config.gpus_per_trial)
    member_asha = fused and config.scheduler == "asha"
    setup = TrialSetup(experiment_dir=str(experiment_dir), epochs=config.epochs, share=share,
                       tracking=tracking if trials_log_themselves else None,
                       rungs=actor_name(name) if member_asha else None)
    # Held until the search ends: Ray removes an actor nobody holds a handle to.
    rungs = rungs_actor(name, config.epochs, experiment_dir) if member_asha else None
    trainable = tune.with_resources(tune.with_parameters(run_group if fused else run_trial, setup=setup),
                                    share.ray_resources())
    # Experiment state saved every second (Tune's "auto" waits >= 10 s): a killed driver loses at most that.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    # Tune's legacy output path, which verbose=0 silences fully; the new one prints every trial error in full.
    # ProgressLine is the live view, and failed trials' errors are in their runs and the summary.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Snapshotting after every trial checkpoint is the point here (num_to_keep=1 forces it); no warning needed.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # The summary reports failed trials, which Tune's closing "Trials did not complete" error would repeat, and
    # trials stopped before their first epoch, which Tune warns it has no results for.
    logging.getLogger("ray.tune.tune").setLevel(logging.CRITICAL)
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    # A fused group's reports carry a list of its members' outcomes, which TensorBoard cannot take (JSON/CSV can).
    logging.getLogger("ray.tune.logger.tensorboardx").setLevel(logging.ERROR)
    if saved is not None and tune.Tuner.can_restore(str(experiment_dir)):
        # Tune brings back the saved searcher, scheduler, budget and callbacks. Errored trials stay failed (their
        # runs are FAILED already); unfinished ones go on from their last checkpoint.
        tuner = tune.Tuner.restore(str(experiment_dir), trainable=trainable, resume_unfinished=True,
                                   resume_errored=False, restart_errored=False)
    else:
        run_config = tune.RunConfig(
            name=name, storage_path=str(experiment_dir.parent), verbose=0,
            failure_config=tune.FailureConfig(max_failures=config.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=[TrialLogger(tracking, space, trials_log_themselves),
                       ProgressLine(name, config.trials * plan.seeds, config.time_budget_s or None),
                       DigestKeeper(str(experiment_dir))],
        )
        sampler_startup = min(10, max(3, config.trials // 3))
        if fused:
            # Members are Optuna's trials; ASHA runs per member in the rungs actor, so Tune's scheduler is FIFO.
            searcher = GroupSearcher(bound, plan, SEARCH_METRIC, config.seed,
                                     startup_groups=min(10, max(3, plan.groups // 3)), first_point=recipe_point)
        else:
            searcher = OptunaSearch(space=bound, metric=SEARCH_METRIC, mode="min", sampler=optuna.samplers.TPESampler(
                seed=config.seed, n_startup_trials=sampler_startup),
                points_to_evaluate=[recipe_point] if recipe_point is not None else None)
        if config.scheduler == "asha" and not fused:
            scheduler = ASHAScheduler(time_attr="epoch", metric="val_loss", mode="min", max_t=config.epochs,
                                      grace_period=1)
        else:
            scheduler = FIFOScheduler()
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=plan.groups,
                                        max_concurrent_trials=config.max_concurrent,
                                        time_budget_s=config.time_budget_s or None, reuse_actors=True,
                                        trial_dirname_creator=lambda trial: trial_dirname(trial.trial_id)),
            run_config=run_config,
        )
    interrupt_handler = signal.getsignal(signal.SIGINT)
    try:
        tuner.fit()
    finally:
        # Tune leaves its own SIGINT handler behind, which would swallow the first Ctrl+C during the refit. Only the
        # main thread may set one (Tune too sets it only there).
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, interrupt_handler)
        # Also after Ctrl+C or a failure: the next --resume checks the folder against this record.
        record_digests(experiment_dir)
    del rungs
    return _finish(config, name, experiment_dir, setup, bound, parent, tracking, trials_log_themselves, recipe_point)


def _recipe_point(config: SearchConfig, bound: BoundSpace) -> tuple[dict[str, Any] | None, str]:
    """(Optuna's values of the recipe's configuration, or None when it is not run; what the search says of it)."""
    if not config.recipe_trial:
        return None, "proposed by Optuna (--no-recipe-trial)"
    try:
        point, differing = bound.recipe_point()
    except SpaceError as error:
        return None, f"proposed by Optuna: {error}"
    held = f"; the space holds {', '.join(differing)}" if differing else ""
    return point, f"the recipe's ({bound.base.recipe_source or config.model + ' defaults'}){held}"


def _check_proposals(bound: BoundSpace) -> list[Experiment]:
    """Resolve PROPOSAL_CHECKS random proposals exactly as trials get them, before any trial starts: a space the
    model rejects is one error now rather than a search of failed trials. Returns their experiments."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=bound.base.seed))
    experiments = []
    for _ in range(PROPOSAL_CHECKS):
        trial = study.ask()
        values = bound.space(trial)
        resolved = bound.resolve(values)
        if INVALID_KEY in resolved:
            raise SpaceError(f"{bound.space.source}: the proposal {_compact(values)} fails ({resolved[INVALID_KEY]}); "
                             f"narrow the space so every proposal is a valid {bound.base.model} config")
        experiments.append(resolved[EXPERIMENT_KEY])
        study.tell(trial, 0.0)
    return experiments


def _recipe_config(bound: BoundSpace, configs: list[found.ConfigSummary],
                   point: dict[str, Any] | None) -> found.ConfigSummary | None:
    """The configuration that trained the recipe's values `point` (the first one, when the search started from it)."""
    if point is None or not configs:
        return None
    recipe = bound.space.decode(bound.space(optuna.trial.FixedTrial(point))).flat()
    return configs[0] if configs[0].proposed.flat() == recipe else None


def _best_test(best: found.ConfigSummary, setup: TrialSetup, outcome: SearchOutcome) -> dict[str, float]:
    """The best configuration's test metrics, its seeds' means. On a CPU the trials test on limit_eval_batches
    batches; each seed's saved weights are then tested on every window, so the search's reported test score is a
    full one (the table's starred ones stay smoke numbers)."""
    names = ("test_mse", "test_mae")
    members = best.members
    if any("test_mse" not in member.metrics for member in members):
        outcome.notes.append(f"the best trial ({best.config_id}) was stopped before its test; the benchmark command "
                             "below tests its config on every window")
        return {}
    test = {name: statistics.fmean(member.metrics[name] for member in members) for name in names}
    windows = min(int(member.metrics["test_windows"]) for member in members)
    total = int(members[0].metrics["test_windows_total"])
    if windows >= total:
        return {**test, "test_windows": windows, "test_windows_total": total}
    try:
        scores = [evaluate_saved_weights(member.experiment, member.metrics["artifact_dir"], setup.share)
                  for member in members]
    except (ray.exceptions.RayTaskError, OSError) as error:
        cause = getattr(error, "cause", None) or error
        outcome.notes.append(f"the best trial's weights could not be tested on every window "
                             f"({type(cause).__name__}: {(str(cause).splitlines() or [''])[0]})")
        return {**test, "test_windows": windows, "test_windows_total": total}
    outcome.best_test = {"test_mse": statistics.fmean(score.mse for score in scores),
                         "test_mae": statistics.fmean(score.mae for score in scores),
                         "test_windows": scores[0].windows, "test_windows_total": scores[0].total}
    return outcome.best_test


def _compact(values: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}"
                     for key, value in values.items())


def _finish(config: SearchConfig, name: str, experiment_dir: Path, setup: TrialSetup, bound: BoundSpace,
            parent: ParentRun, tracking: TrialTracking, trials_log_themselves: bool,
            recipe_point: dict[str, Any] | None) -> SearchOutcome:
    """Bring every child run in line with the trials Tune saved, then log and print what the search found."""
    trials = ExperimentAnalysis(str(experiment_dir)).trials
    summaries = found.summarize(trials, bound.space)
    by_id = {trial.trial_id: trial for trial in trials}
    runs = TrialRuns(tracking)
    for summary in summaries:
        tested = summary.state in ("finished", "stopped") and "test_mse" in summary.metrics
        if tested and not trials_log_themselves and summary.experiment is not None:
            # Normally done live by TrialLogger; this catches a driver killed between a trial's end and its logging.
            live = runs.open(summary.trial_id, summary.experiment)
            if live is not None:
                if "val_loss" in summary.metrics:  # a plain trial's last result is also its last epoch
                    live.log_epoch(summary.metrics)
                live.finish(summary.metrics, Path(summary.metrics["artifact_dir"]), summary.state)
        elif summary.state == "stopped" and not tested:
            runs.end(summary.trial_id, "stopped", params=summary.proposed.flat(),
                     metrics=reached_metrics(summary.metrics))
        elif summary.state == "failed":
            error = summary.metrics.get("error") or error_line(by_id[summary.tune_trial_id])
            runs.end(summary.trial_id, "failed", error=error, params=summary.proposed.flat())
        elif summary.state == "skipped":
            if runs.find(summary.trial_id) is not None:  # a member whose group started but never reached an epoch
                runs.end(summary.trial_id, "stopped")
        elif not tested and runs.find(summary.trial_id) is not None:
            runs.end(summary.trial_id, "interrupted")
    known = {summary.trial_id for summary in summaries}
    orphans = [run for run in runs.all() if run.data.tags.get(TRIAL_ID_TAG) not in known]
    for run in orphans:
        # A trial the driver started but Tune had not saved before the driver was killed; it ran again under
        # a new id, so its half-logged run would count twice.
        runs.client.delete_run(run.info.run_id)
    counts = {state: sum(summary.state == state for summary in summaries)
              for state in ("finished", "stopped", "failed", "running", "pending", "skipped")}
    store = tracking.store
    outcome = SearchOutcome(name=name, experiment_dir=experiment_dir, parent_run_id=parent.run_id,
                            interrupted=counts["running"] + counts["pending"] > 0, counts=counts,
                            open_runs=store.redacted if store.is_server else f"mixbench ui --tracking-uri {store.uri}")
    if orphans:
        outcome.notes.append(f"deleted {len(orphans)} child run(s) of trials lost when the driver was killed")
    if outcome.interrupted:
        parent.end("KILLED")
        return outcome

    configs = found.configurations(summaries)
    ranked = found.ranked(configs)
    recipe = _recipe_config(bound, configs, recipe_point)
    outcome.table = found.top_table(configs, recipe_id=recipe.config_id if recipe is not None else None)
    parent.log_metrics({f"trials_{state}": counts[state] for state in ("finished", "stopped", "failed")})
    study = found.rebuild_study(configs, bound.space)
    plots, skipped = found.write_plots(study, experiment_dir / "plots")
    outcome.notes.extend(f"plot skipped: {reason}" for reason in skipped)
    for path in plots:
        parent.log_artifact(path, "plots")
    outcome.selection = diagnose(configs)
    parent.log_metrics(outcome.selection.metrics())
    if outcome.selection.warning:
        parent.set_tags({"selection_warning": outcome.selection.warning})
    selection_path = experiment_dir / SELECTION_FILE
    selection_path.parent.mkdir(exist_ok=True)
    selection_path.write_text(json.dumps(outcome.selection.as_dict(), indent=2))
    parent.log_artifact(selection_path)
    if recipe is not None:
        parent.set_tags({"recipe_trial_id": recipe.config_id})
        if recipe.value is not None:
            outcome.recipe_value = recipe.value
            parent.log_metrics({"recipe_val_loss": recipe.value})
    if not ranked:
        parent.end("FAILED")
        return outcome
    best = ranked[0]
    if config.prefer_recipe:
        best, why = prefer_recipe(best, recipe)
        outcome.notes.append(f"chosen by --prefer-recipe: {why}")
        parent.set_tags({"selection_rule": "prefer_recipe", "selection_choice": why})
    outcome.best_trial_id, outcome.best_value = best.config_id, best.value
    experiment = best.experiment
    entry = found.best_config(best, experiment)
    seeds = f", mean of {len(best.members)} seeds" if len(best.members) > 1 else ""
    outcome.best_config_path = found.write_best_config(
        experiment_dir / found.BEST_CONFIG_FILE, entry,
        f"best of search {name} (trial {best.config_id}, {SEARCH_METRIC} {best.value:.6g}{seeds}); "
        f"use with: mixbench benchmark --configs <this file>")
    parent.log_params({f"best.{key}": value for key, value in best.proposed.flat().items()}
                      | {"best.seq_len": experiment.seq_len})
    best_metrics = {"best_val_loss": best.value}
    test = _best_test(best, setup, outcome)
    best_metrics.update({f"best_{metric}": test[metric] for metric in ("test_mse", "test_mae") if metric in test})
    parent.log_metrics(best_metrics)
    parent.set_tags({"best_trial_id": best.config_id, **found.best_test_tags(
        int(test.get("test_windows", 0)), int(test.get("test_windows_total", 0)))})
    parent.log_artifact(outcome.best_config_path)

    if config.refit_seeds:
        outcome.refit = refit(experiment, refit_seeds(config.seed, config.refit_seeds), setup.share, tracking,
                              trials_log_themselves, experiment_dir / "refit", fused=int(config.fuse) > 1)
        if outcome.refit is not None:
            parent.log_metrics(outcome.refit.metrics())
    parent.end("FINISHED")
    return outcome
