"""The benchmark grid (datasets x models x horizons x seeds, one config source) run as Ray tasks and logged to
MLflow by the driver as each run finishes; cells already complete in the suite are skipped, so it can be re-run.
"""
from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import ray

from benchmarks.data.files import DatasetFile, resolve_dataset
from benchmarks.data.registry import get_dataset
from benchmarks.errors import SettingError
from benchmarks.experiment import Experiment, resolve_experiment
from benchmarks.grid.configs import ConfigEntry, best_search_configs, load_config_file
from benchmarks.models.registry import MODEL_NAMES
from benchmarks.ray_session import check_address, connect
from benchmarks.tracking.callback import log_result
from benchmarks.tracking.credentials import move_credentials_to_env
from benchmarks.tracking.queries import search_benchmark_runs
from benchmarks.tracking.store import TrackingStore
from benchmarks.training.callbacks import ExperimentResult, capped_test_note
from benchmarks.training.engine import run_experiment
from benchmarks.training.fused_engine import fusion_key, run_fused
from benchmarks.worker_share import WorkerShare

FIRST_SEED = 2021  # Time-Series-Library's fixed seed; --seeds N runs FIRST_SEED .. FIRST_SEED + N - 1
DEFAULT_HORIZONS = (96, 192, 336, 720)
_SUITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class BenchmarkConfig:
    """What `mixbench benchmark` runs and where.

    configs: "default" (recipe defaults), "best" (the latest finished search per cell) or a YAML file path.
    epochs / limit_*: training overrides applied on top of every config (they change its config_hash).
    gpus_per_run None: 0.25 when the Ray cluster has GPUs, else 0. device: auto, cpu or cuda.
    fuse: train the seeds of one cell as one fused training array (one process, one step for all seeds); None: on
    GPUs only (on a CPU one vectorised step costs about as much as the separate ones).
    """

    datasets: list[str]
    models: list[str] = field(default_factory=lambda: ["mixmamba", "patchtst", "itransformer", "dlinear"])
    horizons: list[int] = field(default_factory=lambda: list(DEFAULT_HORIZONS))
    seeds: int = 3
    configs: str = "default"
    suite: str = "default"
    seq_len: int = 96
    epochs: int | None = None
    limit_train_batches: int | None = None
    limit_eval_batches: int | None = None
    gpus_per_run: float | None = None
    cpus_per_run: float = 1.0
    address: str | None = None
    tracking_uri: str | None = None
    experiment: str = "mixbench"
    data_dir: str | None = None
    verify: bool = True
    device: str = "auto"
    fuse: bool | None = None


@dataclass(frozen=True)
class Cell:
    """One run of the grid; `key` is what makes it complete in MLflow (with the suite)."""

    experiment: Experiment  # resolved: recipe, entry settings and flags applied
    display_name: str | None

    @property
    def config_hash(self) -> str:
        return self.experiment.config_hash()

    @property
    def key(self) -> tuple[str, str, int, int, str]:
        experiment = self.experiment
        return (experiment.dataset, experiment.model, experiment.pred_len, experiment.seed, self.config_hash)

    def describe(self) -> str:
        name = f" [{self.display_name}]" if self.display_name else ""
        experiment = self.experiment
        return (f"{experiment.dataset} {experiment.model}{name} pred_len {experiment.pred_len} seed "
                f"{experiment.seed} config {self.config_hash}")


@dataclass
class BenchmarkOutcome:
    """What a benchmark did: run ids of the runs it logged, the cells it skipped, and the failures."""

    suite: str
    logged: list[tuple[Cell, str]] = field(default_factory=list)
    skipped: list[Cell] = field(default_factory=list)
    failed: list[tuple[Cell, str]] = field(default_factory=list)


def _check(config: BenchmarkConfig) -> None:
    """SettingError for any setting of `config` that cannot work."""
    if not _SUITE_NAME.match(config.suite):
        raise SettingError(f"{{setting}} {config.suite!r} must be letters, digits, '.', '_' or '-'; e.g. paper-v1",
                           setting="suite")
    if config.seeds < 1:
        raise SettingError(f"{{setting}} {config.seeds} must be at least 1", setting="seeds")
    if not config.datasets or not config.models or not config.horizons:
        raise SettingError("datasets, models and horizons each need at least one value", setting="datasets")
    for model in config.models:
        if model not in MODEL_NAMES:
            raise SettingError(f"{{setting}}: unknown model {model!r}; choose from {', '.join(MODEL_NAMES)}",
                               setting="models")
    if any(horizon < 1 for horizon in config.horizons):
        raise SettingError(f"{{setting}} {config.horizons} must be positive integers", setting="horizons")
    if config.gpus_per_run is not None and config.gpus_per_run < 0:
        raise SettingError(f"{{setting}} {config.gpus_per_run} must be >= 0 (a fraction shares one GPU)",
                           setting="gpus_per_run")
    if config.cpus_per_run <= 0:
        raise SettingError(f"{{setting}} {config.cpus_per_run} must be > 0", setting="cpus_per_run")
    if config.device not in ("auto", "cpu", "cuda"):
        raise SettingError(f"{{setting}} {config.device!r} is unknown; use auto, cpu or cuda", setting="device")


def config_entries(config: BenchmarkConfig, store: TrackingStore) -> list[ConfigEntry]:
    """The configs to run, from `config.configs` (default, best or a FILE), for a checked `config` whose datasets
    are registry names."""
    if config.configs == "default":
        return [ConfigEntry(model) for model in config.models]
    if config.configs == "best":
        cells = [(d, m, h) for d in config.datasets for m in config.models for h in config.horizons]
        return best_search_configs(store, config.experiment, cells)
    return [
        entry if entry.dataset is None else replace(entry, dataset=get_dataset(entry.dataset).name)
        for entry in load_config_file(Path(config.configs))
    ]


def plan_cells(config: BenchmarkConfig, entries: list[ConfigEntry], data: dict[str, DatasetFile]) -> list[Cell]:
    """Every (dataset, model, horizon, config, seed) cell, resolved and validated once; duplicates removed.

    `data` holds each dataset's file, resolved once by the caller. A FILE entry applies to the grid cells it matches
    (same model; its dataset / pred_len, or any when omitted).
    """
    flags = {
        f"train.{name}": value for name, value in (
            ("epochs", config.epochs), ("limit_train_batches", config.limit_train_batches),
            ("limit_eval_batches", config.limit_eval_batches),
        ) if value is not None
    }
    cells: dict[tuple, Cell] = {}
    for dataset, file in data.items():
        for model in config.models:
            for horizon in config.horizons:
                for entry in (entry for entry in entries if entry.matches(dataset, model, horizon)):
                    experiment = resolve_experiment(model, file, pred_len=horizon,
                                                    seq_len=entry.seq_len or config.seq_len,
                                                    settings={**entry.settings(), **flags})
                    for offset in range(config.seeds):
                        cell = Cell(experiment.with_seed(FIRST_SEED + offset), entry.display_name)
                        cells.setdefault((*cell.key, cell.display_name), cell)
    if not cells:
        raise SettingError(
            f"{{setting}} {config.configs}: no entry matches the grid (datasets {','.join(data)}, models "
            f"{','.join(config.models)}, horizons {','.join(map(str, config.horizons))}); "
            "check the entries' model, dataset and pred_len", setting="configs"
        )
    return list(cells.values())


def complete_cells(store: TrackingStore, experiment: str, suite: str) -> set[tuple[str, str, int, int, str]]:
    """Keys of the suite's complete runs (FINISHED with test_mse) already in MLflow."""
    client = store.client()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return set()
    return {
        (run.data.tags["dataset"], run.data.tags["model"], int(run.data.tags["pred_len"]), int(run.data.tags["seed"]),
         run.data.tags["config_hash"])
        for run in search_benchmark_runs(client, found.experiment_id, suite)
        if "test_mse" in run.data.metrics
    }


def run_cells(experiments: list[Experiment], share: WorkerShare,
              fuse: bool) -> list[tuple[ExperimentResult | str, dict[str, bytes]]]:
    """The Ray task: train and test the seeds of one cell (one fused array when `fuse` and there are several);
    per experiment, its result and artifact files (path -> bytes), or the error line of a run that diverged.

    Artifacts travel as bytes because on a cluster the task's disk is not the driver's.
    """
    share.apply()
    with tempfile.TemporaryDirectory(prefix="mixbench-benchmark-") as directory:
        folders = [Path(directory) / str(index) for index in range(len(experiments))]
        if fuse and len(experiments) > 1:
            results = run_fused(experiments, artifact_dirs=folders)
        else:
            results = [run_experiment(experiment, artifact_dir=folder)
                       for experiment, folder in zip(experiments, folders)]
        return [(result, _files(folder)) if isinstance(result, ExperimentResult) else (_first_line(result), {})
                for result, folder in zip(results, folders)]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def _cell_groups(cells: list[Cell], fuse: bool) -> list[list[Cell]]:
    """The cells each Ray task runs: the seeds of one config together when fusing (equal fusion keys), else one."""
    if not fuse:
        return [[cell] for cell in cells]
    groups: dict[tuple[str, str | None], list[Cell]] = {}
    for cell in cells:
        groups.setdefault((fusion_key(cell.experiment), cell.display_name), []).append(cell)
    return list(groups.values())


def _log(result: ExperimentResult, files: dict[str, bytes], cell: Cell, config: BenchmarkConfig,
         store: TrackingStore) -> str:
    """Write the task's artifacts into a local folder and log the finished run from the driver; its run id."""
    tags = {"suite": config.suite}
    if cell.display_name:
        tags["display_name"] = cell.display_name
    experiment = cell.experiment
    with tempfile.TemporaryDirectory(prefix="mixbench-artifacts-") as directory:
        for name, content in files.items():
            path = Path(directory) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        return log_result(store, config.experiment, replace(result, artifact_dir=Path(directory)), kind="benchmark",
                          run_name=f"{config.suite}/{experiment.model}-{experiment.dataset}-{experiment.pred_len}-"
                                   f"s{experiment.seed}", tags=tags)


def _resources(config: BenchmarkConfig) -> tuple[float, str]:
    """(GPUs per run, the device each run uses), from the settings and what the Ray cluster has."""
    cluster_gpus = float(ray.cluster_resources().get("GPU", 0))
    gpus = config.gpus_per_run if config.gpus_per_run is not None else (0.25 if cluster_gpus > 0 else 0.0)
    if gpus > 0 and cluster_gpus == 0:
        raise SettingError(f"{{setting}} {gpus}: the Ray cluster has no GPUs; set it to 0", setting="gpus_per_run")
    if config.device == "cuda" and gpus == 0:
        raise SettingError("device cuda needs a GPU share per run; set {setting} to 0.25 (or another fraction)",
                           setting="gpus_per_run")
    return gpus, "cuda" if gpus > 0 and config.device != "cpu" else "cpu"


def run_benchmark(config: BenchmarkConfig, echo: Callable[[str], None] = print) -> BenchmarkOutcome:
    """Run the grid: skip complete cells, run the rest as Ray tasks, log each run as it finishes.

    A failed cell is reported through `echo` and recorded in the outcome; the other cells go on.
    """
    _check(config)
    if config.address is not None:
        check_address(config.address)
    store = TrackingStore.resolve(move_credentials_to_env(config.tracking_uri))
    # Every dataset is found and hashed once, every cell validated and complete ones skipped, before Ray starts;
    # the device is set once Ray is up.
    files = [resolve_dataset(name, config.data_dir, verify=config.verify) for name in config.datasets]
    data = {file.name: file for file in files}
    config = replace(config, datasets=list(data))
    cells = plan_cells(config, config_entries(config, store), data)
    done = complete_cells(store, config.experiment, config.suite)
    todo = [cell for cell in cells if cell.key not in done]
    outcome = BenchmarkOutcome(config.suite, skipped=[cell for cell in cells if cell.key in done])
    echo(f"suite {config.suite}: {len(cells)} cells, {len(outcome.skipped)} already complete, {len(todo)} to run; "
         f"logging to {store.redacted}")
    if not todo:
        return outcome
    started = connect(config.address)
    try:
        gpus, device = _resources(config)
        fuse = config.fuse if config.fuse is not None else device == "cuda"
        groups = _cell_groups(todo, fuse)
        echo(f"each run reserves {gpus:g} GPU and {config.cpus_per_run:g} CPU and trains on {device}"
             + (f"; the seeds of a cell train as one fused array ({len(groups)} arrays)" if fuse else ""))
        share = WorkerShare(cpus=config.cpus_per_run, gpus=gpus)
        task = ray.remote(run_cells)
        pending = {
            task.options(num_cpus=share.cpus, num_gpus=share.gpus).remote(
                [replace(cell.experiment, device=device) for cell in group], share, fuse): group
            for group in groups
        }
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            group = pending.pop(ready[0])
            try:
                outcomes = ray.get(ready[0])
            except Exception as error:  # noqa: BLE001 - one failed cell must not stop the others
                outcomes = [(_first_line(error), {})] * len(group)
            for cell, (result, files) in zip(group, outcomes):
                _report(cell, result, files, config, store, outcome, len(todo), echo)
    finally:
        if started:
            ray.shutdown()
    return outcome


def _report(cell: Cell, result: ExperimentResult | str, files: dict[str, bytes], config: BenchmarkConfig,
            store: TrackingStore, outcome: BenchmarkOutcome, total: int, echo: Callable[[str], None]) -> None:
    """Log one finished cell (or record its failure) and print its line."""
    position = len(outcome.logged) + len(outcome.failed) + 1
    message = result if isinstance(result, str) else None
    if message is None:
        try:
            run_id = _log(result, files, cell, config, store)
        except Exception as error:  # noqa: BLE001 - one failed cell must not stop the others
            message = _first_line(error)
    if message is not None:
        outcome.failed.append((cell, message))
        echo(f"[{position}/{total}] FAILED {cell.describe()}: {message}")
        return
    outcome.logged.append((cell, run_id))
    echo(f"[{position}/{total}] {cell.describe()}: test MSE {result.test_mse:.4f} "
         f"MAE {result.test_mae:.4f}{capped_test_note(result.test_windows, result.test_windows_total)} "
         f"(run {run_id})")


def _first_line(error: BaseException) -> str:
    """The original error of a Ray task failure (or `error` itself) as `Type: first line`."""
    cause = getattr(error, "cause", None) or error
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"
