"""Complete benchmark runs as plain records: what the leaderboard, tables and figures read from MLflow.

A run is complete when its status is FINISHED and `test_mse` is logged (docs/architecture.md).
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from benchmarks.errors import ResultsError, TrackingError
from benchmarks.models.registry import model_label
from benchmarks.tracking.queries import BENCHMARK_KIND, search_benchmark_runs

# The run columns of a `mixbench export` CSV, before its tags.*, params.* and metrics.* columns.
RUN_COLUMNS = ("run_id", "parent_run_id", "run_name", "status", "start_time", "end_time")

if TYPE_CHECKING:
    from mlflow.entities import Run

    from benchmarks.tracking.store import TrackingStore


@dataclass(frozen=True)
class BenchmarkRecord:
    """One complete benchmark run: one (suite, dataset, model, horizon, config, seed) cell."""

    dataset: str
    model: str  # registry name, e.g. "patchtst"
    label: str  # column name in tables: the run's `display_name` tag, else the model's display name
    pred_len: int
    seed: int
    config_hash: str
    best_val_loss: float
    test_mse: float
    test_mae: float
    suite: str = ""
    run_id: str = ""
    start_time: int = 0  # ms since the epoch, as MLflow stores it
    test_complete: bool = True  # False: the test pass was capped (train.limit_eval_batches), a smoke number


# The label suffix of a capped-test run's column when a table is asked to include such runs.
CAPPED_LABEL = " [capped test]"


def test_was_complete(tags: Mapping[str, str], params: Mapping[str, str]) -> bool:
    """The run's `test_complete` tag; runs logged before that tag existed count as capped when they had a
    train.limit_eval_batches (the cap may have covered the split, but nothing says so)."""
    if "test_complete" in tags:
        return tags["test_complete"] == "true"
    return params.get("train.limit_eval_batches", "None") in ("", "None")


def record_from_run(run: Run) -> BenchmarkRecord | None:
    """The run as a record, or None when it is not complete (no `test_mse`)."""
    return record_from(run.data.tags, run.data.metrics, run.info.run_id, int(run.info.start_time or 0),
                       run.data.params)


def record_from(tags: Mapping[str, str], metrics: Mapping[str, float], run_id: str, start_time: int,
                params: Mapping[str, str] | None = None) -> BenchmarkRecord | None:
    """A benchmark run's tags, final metrics and params as a record, or None without `test_mse` (KeyError if a tag
    is missing). A capped test keeps its record (test_complete False, CAPPED_LABEL on its label)."""
    if "test_mse" not in metrics:
        return None
    complete = test_was_complete(tags, params or {})
    label = tags.get("display_name") or model_label(tags["model"])
    return BenchmarkRecord(
        dataset=tags["dataset"],
        model=tags["model"],
        label=label if complete else label + CAPPED_LABEL,
        pred_len=int(tags["pred_len"]),
        seed=int(tags["seed"]),
        config_hash=tags["config_hash"],
        best_val_loss=float(metrics["best_val_loss"]),
        test_mse=float(metrics["test_mse"]),
        test_mae=float(metrics["test_mae"]),
        suite=tags.get("suite", ""),
        run_id=run_id,
        start_time=start_time,
        test_complete=complete,
    )


def load_benchmark_records(store: TrackingStore, experiment: str = "mixbench", suite: str | None = None,
                           dataset: str | None = None) -> tuple[str, list[BenchmarkRecord]]:
    """The complete benchmark runs of one suite in the MLflow `store` as records, and that suite's name.

    `suite=None` picks the suite of the most recently started benchmark run. Raises TrackingError for a missing
    SQLite store, ResultsError when there are no complete benchmark runs, or the suite or dataset has none (the
    message lists what exists).
    """
    return _one_suite(_store_records(store, experiment), suite, dataset)


def load_export_records(runs_file: Path, suite: str | None = None, dataset: str | None = None
                        ) -> tuple[str, list[BenchmarkRecord]]:
    """As `load_benchmark_records`, from a `mixbench export` CSV instead of MLflow."""
    records = records_from_export(runs_file)
    if not records:
        raise ResultsError(f"{{setting}} {runs_file} holds no finished benchmark runs; export a suite that has some",
                           setting="runs")
    return _one_suite(records, suite, dataset)


def require_store(store: TrackingStore) -> None:
    """TrackingError unless a SQLite store's file exists: opening a missing path would create an empty store (and
    its folder) where a reader expected runs; say what is wrong instead."""
    if store.sqlite_path is not None and not store.sqlite_path.is_file():
        raise TrackingError(
            f"no MLflow store at {store.sqlite_path}; run `mixbench benchmark` first or pass "
            "{setting} (default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db)", setting="tracking_uri"
        )


def _store_records(store: TrackingStore, experiment: str) -> list[BenchmarkRecord]:
    require_store(store)
    client = store.client()
    found = client.get_experiment_by_name(experiment)
    runs = search_benchmark_runs(client, found.experiment_id) if found is not None else []
    records = [record for record in map(record_from_run, runs) if record is not None]
    if not records:
        raise ResultsError(
            f"no finished benchmark runs in experiment '{experiment}' at {store.redacted}; "
            "run `mixbench benchmark` first or pass the right {setting} or tracking URI", setting="experiment"
        )
    return records


def _one_suite(records: list[BenchmarkRecord], suite: str | None, dataset: str | None
               ) -> tuple[str, list[BenchmarkRecord]]:
    suites = sorted({record.suite for record in records})
    if suite is None:
        suite = max(records, key=lambda record: record.start_time).suite
    elif suite not in suites:
        raise ResultsError(f"unknown suite '{suite}'; {{setting}} must be one of: {', '.join(suites)}", setting="suite")
    records = [record for record in records if record.suite == suite]
    if dataset is not None:
        datasets = sorted({record.dataset for record in records})
        if dataset not in datasets:
            raise ResultsError(
                f"dataset '{dataset}' has no finished runs in suite '{suite}'; {{setting}} must be one of: "
                f"{', '.join(datasets)}", setting="dataset"
            )
        records = [record for record in records if record.dataset == dataset]
    return suite, records


def records_from_export(path: Path) -> list[BenchmarkRecord]:
    """The complete benchmark runs of an export (FINISHED, with test_mse), as the leaderboard reads them."""
    path = Path(path)
    if not path.is_file():
        raise ResultsError(f"{{setting}} {path}: no such file; write one with `mixbench export`", setting="runs")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not set(RUN_COLUMNS) <= set(reader.fieldnames):
            raise ResultsError(f"{{setting}} {path} is not a `mixbench export` CSV (its header lacks "
                               f"{', '.join(RUN_COLUMNS)})", setting="runs")
        unknown = [name for name in reader.fieldnames
                   if name not in RUN_COLUMNS and not name.startswith(("tags.", "params.", "metrics."))]
        if unknown:
            raise ResultsError(f"{{setting}} {path}: unknown column(s) {', '.join(unknown[:3])}; a `mixbench export` "
                               "CSV has the run columns, then tags.*, params.* and metrics.*", setting="runs")
        records = []
        for line, row in enumerate(reader, start=2):
            if row.get("tags.mixbench.kind") != BENCHMARK_KIND or row["status"] != "FINISHED":
                continue
            tags = {key[len("tags."):]: value for key, value in row.items() if key.startswith("tags.") and value}
            try:
                metrics = {key[len("metrics."):]: float(value) for key, value in row.items()
                           if key.startswith("metrics.") and value}
                params = {key[len("params."):]: value for key, value in row.items() if key.startswith("params.")}
                record = record_from(tags, metrics, row["run_id"], int(row["start_time"] or 0), params)
            except (KeyError, ValueError) as error:
                raise ResultsError(f"{{setting}} {path} line {line}: bad or missing value ({error}); re-export it",
                                   setting="runs") from None
            if record is None:
                continue
            bad = [name for name in ("test_mse", "test_mae", "best_val_loss")
                   if not (math.isfinite(getattr(record, name)) and getattr(record, name) >= 0)]
            if bad:
                raise ResultsError(f"{{setting}} {path} line {line}: {bad[0]} is {getattr(record, bad[0])}, not a "
                                   "finite non-negative number; a finished run never logs that, re-export it",
                                   setting="runs")
            records.append(record)
    return records
