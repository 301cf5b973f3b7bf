"""What `mixbench search` takes: SearchConfig, its defaults, the checks of its values, and the defaults chosen from the
cluster's resources. Imports no Ray, Optuna or MLflow, so the command's `--help` stays fast."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from benchmarks.errors import SettingError

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


@dataclass
class SearchConfig:
    """Everything `mixbench search` takes. None means "choose from the cluster" (see `resolve_resources`).

    limit_train_batches / limit_eval_batches: None = CPU_LIMIT_* on a cluster without GPUs and no limit with
    GPUs; 0 = no limit. gpus_per_trial: None = DEFAULT_GPU_SHARE with GPUs, else 0. cpus_per_trial: None =
    the cluster's CPUs split between the trials that fit at once (GPUs / share, or CPU_TRIALS_AT_ONCE).
    fuse: trials per fused group (one Ray Tune trial training them as one stacked model): a number, "off" (1) or
    "auto" (search.group_size); the shares above are then per group. A started search holds the resolved number.
    config_seeds: seeds each proposed configuration trains with (as members of one fused group); it is ranked, and
    Optuna told, on their mean best validation loss. `trials` counts configurations.
    recipe_trial: the recipe's values of the searched settings are the first configuration (Optuna's enqueued
    trial), so the best validation loss found is never above the hand-tuned config's
    (once it trained).
    prefer_recipe: choose the recipe's configuration unless the best beats its mean validation loss by more than one
    standard error (search.selection.prefer_recipe); needs recipe_trial and config_seeds >= 2.
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
    verify: bool = True
    limit_train_batches: int | None = None
    limit_eval_batches: int | None = None
    storage_path: str | None = None
    max_failures: int = MAX_FAILURES
    fuse: int | str = "auto"
    config_seeds: int = 1
    recipe_trial: bool = True
    prefer_recipe: bool = False


def default_name(dataset: str, model: str, pred_len: int, seed: int) -> str:
    """The experiment folder name when --name is not given: the same command resumes the same search."""
    return f"{model}-{dataset}-pred{pred_len}-seed{seed}"


def check_config(config: SearchConfig) -> None:
    """Raise SettingError, one line naming the setting, for values no search can run with."""
    positive_ints = {"trials": config.trials, "epochs": config.epochs, "pred_len": config.pred_len,
                     "config_seeds": config.config_seeds}
    for setting, value in positive_ints.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SettingError(f"{{setting}} {value!r} must be a positive integer", setting=setting)
    if config.scheduler not in SCHEDULERS:
        raise SettingError(f"{{setting}} {config.scheduler!r} is unknown; use {' or '.join(SCHEDULERS)}",
                           setting="scheduler")
    if config.gpus_per_trial is not None and not 0 <= config.gpus_per_trial:
        raise SettingError(f"{{setting}} {config.gpus_per_trial} must be >= 0 (e.g. 0.25 packs 4 trials per GPU)",
                           setting="gpus_per_trial")
    if config.gpus_per_trial is not None and config.gpus_per_trial > 1 and config.gpus_per_trial != int(
            config.gpus_per_trial):
        raise SettingError(f"{{setting}} {config.gpus_per_trial}: above 1 use a whole number of GPUs",
                           setting="gpus_per_trial")
    if config.cpus_per_trial is not None and not config.cpus_per_trial > 0:
        raise SettingError(f"{{setting}} {config.cpus_per_trial} must be > 0", setting="cpus_per_trial")
    if config.max_concurrent is not None and config.max_concurrent < 1:
        raise SettingError(f"{{setting}} {config.max_concurrent} must be >= 1 (leave it out for no limit)",
                           setting="max_concurrent")
    if config.time_budget_s is not None and config.time_budget_s < 0:
        raise SettingError(f"{{setting}} {config.time_budget_s} must be >= 0 seconds (0 = no budget)",
                           setting="time_budget_s")
    if config.refit_seeds < 0:
        raise SettingError(f"{{setting}} {config.refit_seeds} must be >= 0", setting="refit_seeds")
    for setting, value in (("limit_train_batches", config.limit_train_batches),
                           ("limit_eval_batches", config.limit_eval_batches)):
        if value is not None and value < 0:
            raise SettingError(f"{{setting}} {value} must be >= 0 (0 = every batch)", setting=setting)
    if config.prefer_recipe and (not config.recipe_trial or config.config_seeds < 2):
        raise SettingError("{setting} compares the recipe's configuration with the best on their seeds' spread; it "
                           "needs the recipe trial and --config-seeds 2 or more", setting="prefer_recipe")
    if config.max_failures < 0:
        raise SettingError(f"{{setting}} {config.max_failures} must be >= 0", setting="max_failures")


def parse_fuse(value: int | str) -> int | str:
    """The `fuse` setting as "auto" or a number of trials per group ("off" = 1); SettingError for anything else."""
    if value in ("auto", "off"):
        return 1 if value == "off" else "auto"
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
        raise SettingError(f"{{setting}} {value!r}: give auto, off or a number of trials per fused group (e.g. 16)",
                           setting="fuse")
    return int(text)


def resolve_resources(config: SearchConfig, cpus: float, gpus: float) -> SearchConfig:
    """`config` with the cluster-dependent defaults (GPU share, CPUs per trial, batch limits) filled in."""
    gpu_share = config.gpus_per_trial if config.gpus_per_trial is not None else (DEFAULT_GPU_SHARE if gpus else 0.0)
    if gpu_share > gpus:
        raise SettingError(f"{{setting}} {gpu_share} but the cluster has {gpus:g} GPUs; lower it (0 = CPU only)",
                           setting="gpus_per_trial")
    if 0 < gpu_share < 1 and abs(1 / gpu_share - round(1 / gpu_share)) > 1e-6:
        # Each GPU then keeps a remainder no trial fits in, and Ray's fractional accounting has let trials be placed
        # on such remainders (Ray issue 5902); with 1/n every trial or fused group has a whole slot of one GPU.
        raise SettingError(f"{{setting}} {gpu_share:g} is not 1/n of a GPU; use e.g. "
                           f"{1 / math.ceil(1 / gpu_share):.4g} ({math.ceil(1 / gpu_share)} per GPU) or "
                           f"{1 / math.floor(1 / gpu_share):.4g}", setting="gpus_per_trial")
    at_once = max(1, math.floor(gpus / gpu_share)) if gpu_share else CPU_TRIALS_AT_ONCE
    cpus_per_trial = config.cpus_per_trial or max(1.0, math.floor(cpus / at_once))
    if cpus_per_trial > cpus:
        raise SettingError(f"{{setting}} {cpus_per_trial:g} but the cluster has {cpus:g} CPUs; lower it",
                           setting="cpus_per_trial")
    on_cpu = gpu_share == 0
    limit_train = config.limit_train_batches
    limit_eval = config.limit_eval_batches
    if limit_train is None:
        limit_train = CPU_LIMIT_TRAIN_BATCHES if on_cpu else 0
    if limit_eval is None:
        limit_eval = CPU_LIMIT_EVAL_BATCHES if on_cpu else 0
    return replace(config, gpus_per_trial=gpu_share, cpus_per_trial=cpus_per_trial,
                               limit_train_batches=limit_train, limit_eval_batches=limit_eval)
