"""MLflow run queries shared by the benchmark grid, the results tables and the export: every page of a filter."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

BENCHMARK_KIND = "benchmark"


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
