"""The benchmark grid (datasets x models x horizons x seeds, one config source) run as Ray tasks and logged to
MLflow by the driver as each run finishes; cells already complete in the suite are skipped, so it can be re-run.
"""
from __future__ import annotations

import os
import re
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from benchmarks.errors import InputError
from benchmarks.ray_session import check_address, connect
from results.configs import ConfigEntry, best_search_configs, load_config_file

if TYPE_CHECKING:
    from benchmarks.engine import ExperimentResult, ExperimentSpec

FIRST_SEED = 2021  # Time-Series-Library's fixed seed; --seeds N runs FIRST_SEED .. FIRST_SEED + N - 1
DEFAULT_HORIZONS = (96, 192, 336, 720)
_SUITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class BenchmarkConfig:
    """What `mixbench benchmark` runs and where.

    configs: "default" (recipe defaults), "best" (the latest finished search per cell) or a YAML file path.
    epochs / limit_*: training overrides applied on top of every config (they change its config_hash).
    gpus_per_run None: 0.25 when the Ray cluster has GPUs, else 0. device: auto, cpu or cuda.
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
    device: str = "auto"


@dataclass(frozen=True)
class Cell:
    """One run of the grid; `key` is what makes it complete in MLflow (with the suite)."""

    spec: ExperimentSpec  # resolved: recipe, entry overrides and flags applied
    config_hash: str
    display_name: str | None

    @property
    def key(self) -> tuple[str, str, int, int, str]:
        return (self.spec.dataset, self.spec.model, self.spec.pred_len, self.spec.seed, self.config_hash)

    def describe(self) -> str:
        name = f" [{self.display_name}]" if self.display_name else ""
        return (f"{self.spec.dataset} {self.spec.model}{name} pred_len {self.spec.pred_len} seed {self.spec.seed} "
                f"config {self.config_hash}")


@dataclass
class BenchmarkOutcome:
    """What a benchmark did: run ids of the runs it logged, the cells it skipped, and the failures."""

    suite: str
    logged: list[tuple[Cell, str]] = field(default_factory=list)
    skipped: list[Cell] = field(default_factory=list)
    failed: list[tuple[Cell, str]] = field(default_factory=list)


def _checked(config: BenchmarkConfig) -> BenchmarkConfig:
    """`config` with datasets as registry names; InputError for any flag that cannot work."""
    from benchmarks.datasets import get_dataset
    from benchmarks.models import MODEL_NAMES

    if not _SUITE_NAME.match(config.suite):
        raise InputError(f"--suite {config.suite!r} must be letters, digits, '.', '_' or '-'; e.g. --suite paper-v1")
    if config.seeds < 1:
        raise InputError(f"--seeds {config.seeds} must be at least 1")
    if not config.datasets or not config.models or not config.horizons:
        raise InputError("--datasets, --models and --horizons each need at least one value")
    for model in config.models:
        if model not in MODEL_NAMES:
            raise InputError(f"--models: unknown model {model!r}; choose from {', '.join(MODEL_NAMES)}")
    if any(horizon < 1 for horizon in config.horizons):
        raise InputError(f"--horizons {config.horizons} must be positive integers")
    if config.gpus_per_run is not None and config.gpus_per_run < 0:
        raise InputError(f"--gpus-per-run {config.gpus_per_run} must be >= 0 (a fraction shares one GPU)")
    if config.cpus_per_run <= 0:
        raise InputError(f"--cpus-per-run {config.cpus_per_run} must be > 0")
    if config.device not in ("auto", "cpu", "cuda"):
        raise InputError(f"--device {config.device!r} is unknown; use auto, cpu or cuda")
    return replace(config, datasets=[get_dataset(name).name for name in config.datasets])


def config_entries(config: BenchmarkConfig, tracking_uri: str) -> list[ConfigEntry]:
    """The configs to run, from `config.configs` (default, best or a FILE); datasets as registry names."""
    from benchmarks.datasets import get_dataset

    config = _checked(config)
    if config.configs == "default":
        return [ConfigEntry(model) for model in config.models]
    if config.configs == "best":
        cells = [(d, m, h) for d in config.datasets for m in config.models for h in config.horizons]
        return best_search_configs(tracking_uri, config.experiment, cells)
    return [
        entry if entry.dataset is None else replace(entry, dataset=get_dataset(entry.dataset).name)
        for entry in load_config_file(Path(config.configs))
    ]


def plan_cells(config: BenchmarkConfig, entries: list[ConfigEntry], data_dir: str | None) -> list[Cell]:
    """Every (dataset, model, horizon, config, seed) cell, resolved and validated (device cpu); duplicates removed.

    A FILE entry applies to the grid cells it matches (same model; its dataset / pred_len, or any when omitted).
    """
    from benchmarks.datasets import get_dataset
    from benchmarks.engine import ExperimentSpec, resolve_experiment, run_model_config
    from benchmarks.tracking import config_hash

    config = _checked(config)
    datasets = config.datasets
    train_overrides = {
        name: value for name, value in (
            ("epochs", config.epochs), ("limit_train_batches", config.limit_train_batches),
            ("limit_eval_batches", config.limit_eval_batches),
        ) if value is not None
    }
    cells: dict[tuple, Cell] = {}
    for dataset in datasets:
        for model in config.models:
            for horizon in config.horizons:
                for entry in (entry for entry in entries if entry.matches(dataset, model, horizon)):
                    for offset in range(config.seeds):
                        spec = resolve_experiment(ExperimentSpec(
                            dataset=dataset, model=model, pred_len=horizon, seq_len=entry.seq_len or config.seq_len,
                            seed=FIRST_SEED + offset, model_overrides=dict(entry.model_overrides),
                            train_overrides={**entry.train_overrides, **train_overrides},
                            device="cpu", data_dir=data_dir,
                        ))
                        enc_in = get_dataset(dataset).n_channels if spec.features in ("M", "MS") else 1
                        digest = config_hash(model, run_model_config(spec, enc_in), asdict(spec.train))
                        cell = Cell(spec, digest, entry.display_name)
                        cells.setdefault((*cell.key, cell.display_name), cell)
    if not cells:
        raise InputError(
            f"--configs {config.configs}: no entry matches the grid (datasets {','.join(datasets)}, models "
            f"{','.join(config.models)}, horizons {','.join(map(str, config.horizons))}); "
            "check the entries' model, dataset and pred_len"
        )
    return list(cells.values())


def complete_cells(tracking_uri: str, experiment: str, suite: str) -> set[tuple[str, str, int, int, str]]:
    """Keys of the suite's complete runs (FINISHED with test_mse) already in MLflow."""
    from benchmarks.tracking import tracking_client

    from results.runs import search_benchmark_runs

    client = tracking_client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return set()
    return {
        (run.data.tags["dataset"], run.data.tags["model"], int(run.data.tags["pred_len"]), int(run.data.tags["seed"]),
         run.data.tags["config_hash"])
        for run in search_benchmark_runs(client, found.experiment_id, suite)
        if "test_mse" in run.data.metrics
    }


def run_cell(spec: ExperimentSpec, cpus: float, gpu_fraction: float) -> tuple[ExperimentResult, dict[str, bytes]]:
    """The Ray task: train and test one cell; returns the result and its artifact files (path -> bytes).

    Artifacts travel as bytes because on a cluster the task's disk is not the driver's.
    """
    import torch

    from benchmarks.engine import run_experiment

    torch.set_num_threads(max(1, int(cpus)))
    if spec.device.startswith("cuda") and 0 < gpu_fraction < 1:
        torch.cuda.set_per_process_memory_fraction(gpu_fraction)
    with tempfile.TemporaryDirectory(prefix="mixbench-benchmark-") as directory:
        result = run_experiment(spec, artifact_dir=Path(directory))
        files = {
            str(path.relative_to(directory)): path.read_bytes()
            for path in sorted(Path(directory).rglob("*")) if path.is_file()
        }
    return replace(result, artifact_dir=None), files


def _log(result: ExperimentResult, files: dict[str, bytes], cell: Cell, config: BenchmarkConfig, uri: str) -> str:
    """Write the task's artifacts into a local folder and log the finished run from the driver; its run id."""
    from benchmarks.tracking import TrackingConfig, log_experiment

    tags = {"suite": config.suite}
    if cell.display_name:
        tags["display_name"] = cell.display_name
    spec = cell.spec
    tracking = TrackingConfig(
        uri=uri, experiment=config.experiment, kind="benchmark", tags=tags,
        run_name=f"{config.suite}/{spec.model}-{spec.dataset}-{spec.pred_len}-s{spec.seed}",
    )
    with tempfile.TemporaryDirectory(prefix="mixbench-artifacts-") as directory:
        for name, content in files.items():
            path = Path(directory) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        return log_experiment(replace(result, artifact_dir=Path(directory)), tracking)


def _resources(config: BenchmarkConfig) -> tuple[float, str]:
    """(GPUs per run, the device each run uses), from the flags and what the Ray cluster has."""
    import ray

    cluster_gpus = float(ray.cluster_resources().get("GPU", 0))
    gpus = config.gpus_per_run if config.gpus_per_run is not None else (0.25 if cluster_gpus > 0 else 0.0)
    if gpus > 0 and cluster_gpus == 0:
        raise InputError(f"--gpus-per-run {gpus}: the Ray cluster has no GPUs; pass --gpus-per-run 0")
    if config.device == "cuda" and gpus == 0:
        raise InputError("--device cuda needs a GPU share per run; pass --gpus-per-run 0.25 (or another fraction)")
    return gpus, "cuda" if gpus > 0 and config.device != "cpu" else "cpu"


def run_benchmark(config: BenchmarkConfig, echo: Callable[[str], None] = print) -> BenchmarkOutcome:
    """Run the grid: skip complete cells, run the rest as Ray tasks, log each run as it finishes.

    A failed cell is reported through `echo` and recorded in the outcome; the other cells go on.
    """
    import ray

    from benchmarks.tracking import check_tracking_uri, redact_uri, resolve_tracking_uri

    config = _checked(config)
    if config.address is not None:
        check_address(config.address)
    uri = resolve_tracking_uri(config.tracking_uri)
    check_tracking_uri(uri)
    # Resolved here so every Ray worker (which may not share this process's environment) reads the same folder.
    data_dir = config.data_dir or os.environ.get("MIXBENCH_DATA_DIR")
    data_dir = str(Path(data_dir).expanduser().resolve()) if data_dir else None
    # Every cell is validated, and complete ones skipped, before Ray starts; the device is set once Ray is up.
    cells = plan_cells(config, config_entries(config, uri), data_dir)
    done = complete_cells(uri, config.experiment, config.suite)
    todo = [cell for cell in cells if cell.key not in done]
    outcome = BenchmarkOutcome(config.suite, skipped=[cell for cell in cells if cell.key in done])
    echo(f"suite {config.suite}: {len(cells)} cells, {len(outcome.skipped)} already complete, {len(todo)} to run; "
         f"logging to {redact_uri(uri)}")
    if not todo:
        return outcome
    started = connect(config.address)
    try:
        gpus, device = _resources(config)
        echo(f"each run reserves {gpus:g} GPU and {config.cpus_per_run:g} CPU and trains on {device}")
        task = ray.remote(run_cell)
        pending = {
            task.options(num_cpus=config.cpus_per_run, num_gpus=gpus).remote(
                replace(cell.spec, device=device), config.cpus_per_run, gpus): cell
            for cell in todo
        }
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            cell = pending.pop(ready[0])
            position = len(outcome.logged) + len(outcome.failed) + 1
            try:
                result, files = ray.get(ready[0])
                run_id = _log(result, files, cell, config, uri)
            except Exception as error:  # noqa: BLE001 - one failed cell must not stop the others
                message = _first_line(error)
                outcome.failed.append((cell, message))
                echo(f"[{position}/{len(todo)}] FAILED {cell.describe()}: {message}")
                continue
            outcome.logged.append((cell, run_id))
            echo(f"[{position}/{len(todo)}] {cell.describe()}: test MSE {result.test_mse:.4f} "
                 f"MAE {result.test_mae:.4f} (run {run_id})")
    finally:
        if started:
            ray.shutdown()
    return outcome


def _first_line(error: BaseException) -> str:
    """The original error of a Ray task failure (or `error` itself) as `Type: first line`."""
    cause = getattr(error, "cause", None) or error
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"
