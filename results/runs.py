"""Complete benchmark runs as plain records: what the leaderboard, tables and figures read from MLflow.

A run is complete when its status is FINISHED and `test_mse` is logged (docs/architecture.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from benchmarks.errors import InputError

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

BENCHMARK_KIND = "benchmark"
MODEL_LABELS = {"mixmamba": "MixMamba", "itransformer": "iTransformer", "patchtst": "PatchTST", "dlinear": "DLinear"}


def model_label(model: str) -> str:
    """The display name of a registry model ("patchtst" -> "PatchTST"); unknown names are returned unchanged."""
    return MODEL_LABELS.get(model, model)


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


def search_benchmark_runs(client: MlflowClient, experiment_id: str, suite: str | None = None) -> list[Run]:
    """Every FINISHED benchmark run of an experiment (optionally of one suite), all result pages."""
    filters = [f"tags.`mixbench.kind` = '{BENCHMARK_KIND}'", "attributes.status = 'FINISHED'"]
    if suite is not None:
        filters.append(f"tags.suite = '{suite}'")
    return search_all_runs(client, experiment_id, " and ".join(filters))


def search_all_runs(client: MlflowClient, experiment_id: str, filter_string: str) -> list[Run]:
    """Every run of an experiment that matches an MLflow filter string, all result pages."""
    runs: list[Run] = []
    page_token = None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, max_results=1000,
                                  page_token=page_token)
        runs.extend(page)
        page_token = page.token
        if not page_token:
            return runs


def record_from_run(run: Run) -> BenchmarkRecord | None:
    """The run as a record, or None when it is not complete (no `test_mse`)."""
    return record_from(run.data.tags, run.data.metrics, run.info.run_id, int(run.info.start_time or 0))


def record_from(tags: Mapping[str, str], metrics: Mapping[str, float], run_id: str, start_time: int
                ) -> BenchmarkRecord | None:
    """A benchmark run's tags and final metrics as a record, or None without `test_mse` (KeyError if a tag is
    missing)."""
    if "test_mse" not in metrics:
        return None
    return BenchmarkRecord(
        dataset=tags["dataset"],
        model=tags["model"],
        label=tags.get("display_name") or model_label(tags["model"]),
        pred_len=int(tags["pred_len"]),
        seed=int(tags["seed"]),
        config_hash=tags["config_hash"],
        best_val_loss=float(metrics["best_val_loss"]),
        test_mse=float(metrics["test_mse"]),
        test_mae=float(metrics["test_mae"]),
        suite=tags.get("suite", ""),
        run_id=run_id,
        start_time=start_time,
    )


def load_benchmark_records(
    tracking_uri: str, experiment: str = "mixbench", suite: str | None = None, dataset: str | None = None,
    runs_file: Path | None = None,
) -> tuple[str, list[BenchmarkRecord]]:
    """The complete benchmark runs of one suite as records, and that suite's name.

    They come from MLflow, or from a `mixbench export` CSV when `runs_file` is given. `suite=None` picks the suite
    of the most recently started benchmark run. Raises InputError when there are no complete benchmark runs, or the
    suite or dataset has none (the message lists what exists).
    """
    if runs_file is not None:
        from results.export import records_from_export

        records = records_from_export(runs_file)
        if not records:
            raise InputError(f"--runs {runs_file} holds no finished benchmark runs; export a suite that has some")
        return _one_suite(records, suite, dataset)
    return _one_suite(_store_records(tracking_uri, experiment), suite, dataset)


def _store_records(tracking_uri: str, experiment: str) -> list[BenchmarkRecord]:
    from benchmarks.tracking import tracking_client

    # Opening a missing SQLite path would create an empty store; say what is wrong instead.
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///"):]).is_file():
        raise InputError(
            f"no MLflow store at {tracking_uri[len('sqlite:///'):]}; run `mixbench benchmark` first or pass "
            "--tracking-uri (default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db)"
        )
    client = tracking_client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    runs = search_benchmark_runs(client, found.experiment_id) if found is not None else []
    records = [record for record in map(record_from_run, runs) if record is not None]
    if not records:
        raise InputError(
            f"no finished benchmark runs in experiment '{experiment}' at {tracking_uri}; "
            "run `mixbench benchmark` first or pass the right --tracking-uri/--experiment"
        )
    return records


def _one_suite(records: list[BenchmarkRecord], suite: str | None, dataset: str | None
               ) -> tuple[str, list[BenchmarkRecord]]:
    suites = sorted({record.suite for record in records})
    if suite is None:
        suite = max(records, key=lambda record: record.start_time).suite
    elif suite not in suites:
        raise InputError(f"unknown suite '{suite}'; --suite must be one of: {', '.join(suites)}")
    records = [record for record in records if record.suite == suite]
    if dataset is not None:
        datasets = sorted({record.dataset for record in records})
        if dataset not in datasets:
            raise InputError(
                f"dataset '{dataset}' has no finished runs in suite '{suite}'; --dataset must be one of: "
                f"{', '.join(datasets)}"
            )
        records = [record for record in records if record.dataset == dataset]
    return suite, records
