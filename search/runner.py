"""Run a search: Optuna (seeded TPE, define-by-run space) proposes trials, Ray Tune runs them packed onto the cluster's
CPUs/GPU shares, ASHA stops weak ones early, MLflow records a parent run and one child run per trial; `resume=True`
continues an interrupted search from its Tune experiment folder without losing or repeating finished trials.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.errors import InputError

if TYPE_CHECKING:
    from benchmarks.tracking import TrackingConfig
    from search.parent_run import ParentRun
    from search.space import SearchSpace
    from search.trial import TrialSetup

SCHEDULERS = ("asha", "fifo")
DEFAULT_TRIALS = 8
DEFAULT_EPOCHS = 3
DEFAULT_TIME_BUDGET_S = 540.0
# On a cluster without GPUs each trial trains on a slice of every epoch, so the default search fits in its budget.
CPU_LIMIT_TRAIN_BATCHES = 20
CPU_LIMIT_EVAL_BATCHES = 10
DEFAULT_GPU_SHARE = 0.25
CPU_TRIALS_AT_ONCE = 2
MAX_FAILURES = 2
DEFAULT_SEQ_LEN = 96
STATE_FILE = "mixbench_search.json"
PROPOSAL_CHECKS = 32


@dataclass
class SearchConfig:
    """Everything `mixbench search` takes. None means "choose from the cluster" (see `resolve_resources`).

    limit_train_batches / limit_eval_batches: None = CPU_LIMIT_* on a cluster without GPUs and no limit with
    GPUs; 0 = no limit. gpus_per_trial: None = DEFAULT_GPU_SHARE with GPUs, else 0. cpus_per_trial: None =
    the cluster's CPUs split between the trials that fit at once (GPUs / share, or CPU_TRIALS_AT_ONCE).
    """

    dataset: str
    model: str = "mixmamba"
    pred_len: int = 96
    trials: int = DEFAULT_TRIALS
    epochs: int = DEFAULT_EPOCHS
    gpus_per_trial: float | None = None
    cpus_per_trial: float | None = None
    max_concurrent: int | None = None
    scheduler: str = "asha"
    time_budget_s: float | None = DEFAULT_TIME_BUDGET_S
    seed: int = 2021
    name: str | None = None
    resume: bool = False
    address: str | None = None
    space: str | None = None
    search_seq_len: list[int] | None = None
    refit_seeds: int = 0
    tracking_uri: str | None = None
    experiment: str = "mixbench"
    data_dir: str | None = None
    limit_train_batches: int | None = None
    limit_eval_batches: int | None = None
    storage_path: str | None = None
    max_failures: int = MAX_FAILURES


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


def default_name(dataset: str, model: str, pred_len: int, seed: int) -> str:
    """The experiment folder name when --name is not given: the same command resumes the same search."""
    return f"{model}-{dataset}-pred{pred_len}-seed{seed}"


def check_config(config: SearchConfig) -> None:
    """Raise InputError, one line naming the flag, for values no search can run with."""
    positive_ints = {"--trials": config.trials, "--epochs": config.epochs, "--pred-len": config.pred_len}
    for flag, value in positive_ints.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{flag} {value!r} must be a positive integer")
    if config.scheduler not in SCHEDULERS:
        raise InputError(f"--scheduler {config.scheduler!r} is unknown; use {' or '.join(SCHEDULERS)}")
    if config.gpus_per_trial is not None and not 0 <= config.gpus_per_trial:
        raise InputError(f"--gpus-per-trial {config.gpus_per_trial} must be >= 0 (e.g. 0.25 packs 4 trials per GPU)")
    if config.gpus_per_trial is not None and config.gpus_per_trial > 1 and config.gpus_per_trial != int(
            config.gpus_per_trial):
        raise InputError(f"--gpus-per-trial {config.gpus_per_trial}: above 1 use a whole number of GPUs")
    if config.cpus_per_trial is not None and not config.cpus_per_trial > 0:
        raise InputError(f"--cpus-per-trial {config.cpus_per_trial} must be > 0")
    if config.max_concurrent is not None and config.max_concurrent < 1:
        raise InputError(f"--max-concurrent {config.max_concurrent} must be >= 1 (leave it out for no limit)")
    if config.time_budget_s is not None and config.time_budget_s < 0:
        raise InputError(f"--time-budget {config.time_budget_s} must be >= 0 seconds (0 = no budget)")
    if config.refit_seeds < 0:
        raise InputError(f"--refit-seeds {config.refit_seeds} must be >= 0")
    for flag, value in (("--limit-train-batches", config.limit_train_batches),
                        ("--limit-eval-batches", config.limit_eval_batches)):
        if value is not None and value < 0:
            raise InputError(f"{flag} {value} must be >= 0 (0 = every batch)")
    if config.max_failures < 0:
        raise InputError(f"max_failures {config.max_failures} must be >= 0")


def resolve_resources(config: SearchConfig, cpus: float, gpus: float) -> SearchConfig:
    """`config` with the cluster-dependent defaults (GPU share, CPUs per trial, batch limits) filled in."""
    gpu_share = config.gpus_per_trial if config.gpus_per_trial is not None else (DEFAULT_GPU_SHARE if gpus else 0.0)
    if gpu_share > gpus:
        raise InputError(f"--gpus-per-trial {gpu_share} but the cluster has {gpus:g} GPUs; lower it (0 = CPU only)")
    at_once = max(1, math.floor(gpus / gpu_share)) if gpu_share else CPU_TRIALS_AT_ONCE
    cpus_per_trial = config.cpus_per_trial or max(1.0, math.floor(cpus / at_once))
    if cpus_per_trial > cpus:
        raise InputError(f"--cpus-per-trial {cpus_per_trial:g} but the cluster has {cpus:g} CPUs; lower it")
    on_cpu = gpu_share == 0
    limit_train = config.limit_train_batches
    limit_eval = config.limit_eval_batches
    if limit_train is None:
        limit_train = CPU_LIMIT_TRAIN_BATCHES if on_cpu else 0
    if limit_eval is None:
        limit_eval = CPU_LIMIT_EVAL_BATCHES if on_cpu else 0
    return dataclasses.replace(config, gpus_per_trial=gpu_share, cpus_per_trial=cpus_per_trial,
                               limit_train_batches=limit_train, limit_eval_batches=limit_eval)


def run_search(config: SearchConfig) -> SearchOutcome:
    """Run (or with `config.resume`, continue) the search `config` describes; see the module docstring.

    Raises InputError for bad input before any trial starts. Prints the experiment name and folder first (so the
    search can be resumed), a live status line, then the top trials, the best-config path and refit results.
    """
    check_config(config)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from benchmarks.datafiles import ensure_file, resolve_data_dir
    from benchmarks.datasets import get_dataset
    from benchmarks.models import model_classes
    from benchmarks.tracking import check_tracking_uri, resolve_tracking_uri

    dataset = get_dataset(config.dataset)
    model_classes(config.model)
    name = config.name or default_name(dataset.name, config.model, config.pred_len, config.seed)
    storage = Path(config.storage_path or "ray_results").expanduser().resolve()
    experiment_dir = storage / name
    state_path = experiment_dir / STATE_FILE
    saved = None
    if config.resume:
        if not state_path.is_file():
            raise InputError(f"--resume: no search to resume at {experiment_dir}; drop --resume to start it, or pass "
                             "the --name / --storage-path it was started with")
        saved = json.loads(state_path.read_text())
        config = _resumed_config(config, saved["config"])
    elif experiment_dir.exists():
        raise InputError(f"a search already exists at {experiment_dir}; add --resume to continue it or pass another "
                         "--name")
    config = dataclasses.replace(config, data_dir=str(resolve_data_dir(config.data_dir).resolve()),
                                 tracking_uri=resolve_tracking_uri(config.tracking_uri))
    check_tracking_uri(config.tracking_uri)
    space = _load_space(config)
    _, sha256 = ensure_file(dataset, config.data_dir)

    from benchmarks import ray_session

    started_ray = ray_session.connect(config.address)
    try:
        cpus, gpus = ray_session.cluster_resources()
        config = resolve_resources(config, cpus, gpus)
        return _run(config, dataset.name, name, experiment_dir, space, sha256, saved)
    finally:
        if started_ray:
            import ray

            ray.shutdown()


def _resumed_config(given: SearchConfig, saved: dict[str, Any]) -> SearchConfig:
    """The saved settings of the search, except where to run (--address) and how many refit seeds."""
    config = SearchConfig(**{**saved, "resume": True, "address": given.address, "refit_seeds": given.refit_seeds})
    defaults = SearchConfig(dataset=given.dataset)
    differing = [key for key in asdict(given) if key not in ("resume", "address", "refit_seeds", "dataset")
                 and getattr(given, key) != getattr(defaults, key) and getattr(given, key) != saved.get(key)]
    if differing:
        print(f"note: --resume keeps the search's saved settings; ignoring {', '.join(differing)}")
    return config


def _load_space(config: SearchConfig) -> SearchSpace:
    from search.space import default_space_path, load_space

    space = load_space(config.space or default_space_path(config.model), config.model)
    if config.search_seq_len:
        space = space.with_seq_len_choices(list(config.search_seq_len))
    return space


def _run(config: SearchConfig, dataset: str, name: str, experiment_dir: Path, space: SearchSpace, sha256: str,
         saved: dict[str, Any] | None) -> SearchOutcome:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    from benchmarks.datasets import get_dataset
    from benchmarks.tracking import TrackingConfig, protocol_tag, redact_uri
    from search.parent_run import ParentRun
    from search.progress import ProgressLine
    from search.trial import FEATURES, SEARCH_METRIC, TrialSetup, run_trial, trial_dirname
    from search.trial_logger import TrialLogger

    setup = TrialSetup(
        space=space, dataset=dataset, model=config.model, pred_len=config.pred_len, seq_len=DEFAULT_SEQ_LEN,
        seed=config.seed, epochs=config.epochs, limit_train_batches=config.limit_train_batches or None,
        limit_eval_batches=config.limit_eval_batches or None, data_dir=config.data_dir,
        enc_in=get_dataset(dataset).n_channels, sha256=sha256, cpus_per_trial=config.cpus_per_trial,
        gpus_per_trial=config.gpus_per_trial, experiment_dir=str(experiment_dir),
    )
    _check_proposals(setup)
    searched_seq_len = space.searches_seq_len
    trials_log_themselves = config.tracking_uri.startswith(("http://", "https://"))
    if saved is None:
        parent = ParentRun.create(
            config.tracking_uri, config.experiment, name, dataset=dataset, model=config.model,
            pred_len=config.pred_len, seq_len=None if searched_seq_len else DEFAULT_SEQ_LEN, seed=config.seed,
            params={**space.describe(), "space.file": space.path,
                    "trials": config.trials, "epochs": config.epochs, "time_budget_s": config.time_budget_s,
                    "scheduler": config.scheduler, "cpus_per_trial": config.cpus_per_trial,
                    "gpus_per_trial": config.gpus_per_trial, "max_concurrent": config.max_concurrent,
                    "limit_train_batches": config.limit_train_batches or None,
                    "limit_eval_batches": config.limit_eval_batches or None, "max_failures": config.max_failures},
        )
        experiment_dir.mkdir(parents=True, exist_ok=True)
        stored = asdict(dataclasses.replace(config, resume=False, address=None, refit_seeds=0))
        (experiment_dir / STATE_FILE).write_text(json.dumps({"parent_run_id": parent.run_id, "config": stored},
                                                            indent=2))
    else:
        parent = ParentRun(config.tracking_uri, config.experiment, saved["parent_run_id"])
        parent.reopen()
    print(f"search {name}: {config.model} on {dataset}, pred_len {config.pred_len}, {config.trials} trials x "
          f"{config.epochs} epochs, {config.scheduler}, budget {config.time_budget_s or 'none'} s, "
          f"{config.cpus_per_trial:g} CPU + {config.gpus_per_trial:g} GPU per trial\n"
          f"  folder {experiment_dir} (to resume: the same command with --resume)\n"
          f"  MLflow {redact_uri(config.tracking_uri)}, experiment {config.experiment}, parent run {parent.run_id}",
          flush=True)

    child_tags = {"search_name": name}
    if searched_seq_len:
        child_tags["protocol"] = protocol_tag(FEATURES, None)
    tracking = TrackingConfig(uri=config.tracking_uri, experiment=config.experiment, parent_run_id=parent.run_id,
                              tags=child_tags, kind="trial")
    setup = dataclasses.replace(setup, tracking=tracking if trials_log_themselves else None)
    resources = {"cpu": config.cpus_per_trial, "gpu": config.gpus_per_trial} if config.gpus_per_trial else {
        "cpu": config.cpus_per_trial}
    trainable = tune.with_resources(tune.with_parameters(run_trial, setup=setup), resources)
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
            callbacks=[TrialLogger(tracking, setup, trials_log_themselves),
                       ProgressLine(name, config.trials, config.time_budget_s or None)],
        )
        sampler_startup = min(10, max(3, config.trials // 3))
        import optuna

        searcher = OptunaSearch(space=space, metric=SEARCH_METRIC, mode="min",
                                sampler=optuna.samplers.TPESampler(seed=config.seed, n_startup_trials=sampler_startup))
        if config.scheduler == "asha":
            scheduler = ASHAScheduler(time_attr="epoch", metric="val_loss", mode="min", max_t=config.epochs,
                                      grace_period=1)
        else:
            scheduler = FIFOScheduler()
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=config.trials,
                                        max_concurrent_trials=config.max_concurrent,
                                        time_budget_s=config.time_budget_s or None, reuse_actors=True,
                                        trial_dirname_creator=lambda trial: trial_dirname(trial.trial_id)),
            run_config=run_config,
        )
    tuner.fit()
    return _finish(config, dataset, name, experiment_dir, setup, parent, tracking, trials_log_themselves)


def _check_proposals(setup: TrialSetup) -> None:
    """Resolve PROPOSAL_CHECKS random proposals against the recipe and the model config before any trial starts:
    a space the model rejects is one input error now rather than a search of failed trials.
    """
    import optuna

    from search.trial import resolve_trial

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=setup.seed))
    for _ in range(PROPOSAL_CHECKS):
        trial = study.ask()
        proposed = setup.space.propose(trial)
        try:
            resolve_trial(setup, proposed)
        except InputError as error:
            raise InputError(f"{setup.space.source}: the proposal {_compact(proposed.flat())} fails ({error}); "
                             f"narrow the space so every proposal is a valid {setup.model} config") from None
        study.tell(trial, 0.0)


def _compact(values: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}"
                     for key, value in values.items())


def _finish(config: SearchConfig, dataset: str, name: str, experiment_dir: Path, setup: TrialSetup,
            parent: ParentRun, tracking: TrackingConfig, trials_log_themselves: bool) -> SearchOutcome:
    """Bring every child run in line with the trials Tune saved, then log and print what the search found."""
    from ray.tune import ExperimentAnalysis

    from search import summary as found
    from search.trial import SEARCH_METRIC, resolve_trial
    from search.trial_logger import error_line
    from search.trial_runs import TRIAL_ID_TAG, TrialRuns

    trials = ExperimentAnalysis(str(experiment_dir)).trials
    summaries = found.summarize(trials, setup.space)
    by_id = {trial.trial_id: trial for trial in trials}
    runs = TrialRuns(tracking)
    for summary in summaries:
        trial = by_id[summary.trial_id]
        if summary.state == "finished" and not trials_log_themselves:
            # Normally done live by TrialLogger; this catches a driver killed between a trial's end and its logging.
            live = runs.open(summary.trial_id, resolve_trial(setup, summary.proposed))
            if live is not None:
                live.log_epoch(summary.metrics)
                live.finish(summary.metrics, Path(summary.metrics["artifact_dir"]))
        elif summary.state == "stopped":
            runs.end(summary.trial_id, "stopped", params=summary.proposed.flat())
        elif summary.state == "failed":
            runs.end(summary.trial_id, "failed", error=error_line(trial), params=summary.proposed.flat())
        elif runs.find(summary.trial_id) is not None:
            runs.end(summary.trial_id, "interrupted")
    known = set(by_id)
    orphans = [run for run in runs.all() if run.data.tags.get(TRIAL_ID_TAG) not in known]
    for run in orphans:
        # A trial the driver started but Tune had not saved before the driver was killed; it ran again under
        # a new id, so its half-logged run would count twice.
        runs.client.delete_run(run.info.run_id)
    counts = {state: sum(summary.state == state for summary in summaries)
              for state in ("finished", "stopped", "failed", "running", "pending")}
    outcome = SearchOutcome(name=name, experiment_dir=experiment_dir, parent_run_id=parent.run_id,
                            interrupted=counts["running"] + counts["pending"] > 0, counts=counts)
    if orphans:
        outcome.notes.append(f"deleted {len(orphans)} child run(s) of trials lost when the driver was killed")
    if outcome.interrupted:
        parent.end("KILLED")
        return outcome

    ranked = found.ranked(summaries)
    outcome.table = found.top_table(summaries)
    parent.log_metrics({f"trials_{state}": counts[state] for state in ("finished", "stopped", "failed")})
    study = found.rebuild_study(summaries, setup.space)
    plots, skipped = found.write_plots(study, experiment_dir / "plots")
    outcome.notes.extend(f"plot skipped: {reason}" for reason in skipped)
    for path in plots:
        parent.log_artifact(path, "plots")
    if not ranked:
        parent.end("FAILED")
        return outcome
    best = ranked[0]
    outcome.best_trial_id, outcome.best_value = best.trial_id, best.value
    resolved = resolve_trial(setup, best.proposed)
    entry = found.best_config(config.model, dataset, config.pred_len, best, resolved)
    outcome.best_config_path = found.write_best_config(
        experiment_dir / found.BEST_CONFIG_FILE, entry,
        f"best of search {name} (trial {best.trial_id}, {SEARCH_METRIC} {best.value:.6g}); "
        f"use with: mixbench benchmark --configs <this file>")
    parent.log_params({f"best.{key}": value for key, value in best.proposed.flat().items()}
                      | {"best.seq_len": resolved.spec.seq_len})
    best_metrics = {"best_val_loss": best.value}
    best_metrics.update({f"best_{metric}": best.metrics[metric] for metric in ("test_mse", "test_mae")
                         if metric in best.metrics})
    parent.log_metrics(best_metrics)
    parent.set_tags({"best_trial_id": best.trial_id})
    parent.log_artifact(outcome.best_config_path)

    if config.refit_seeds:
        from search.refit import refit, refit_seeds

        outcome.refit = refit(setup, best.proposed, refit_seeds(config.seed, config.refit_seeds), tracking,
                              trials_log_themselves, experiment_dir / "refit")
        if outcome.refit is not None:
            parent.log_metrics(outcome.refit.metrics())
    parent.end("FINISHED")
    return outcome
