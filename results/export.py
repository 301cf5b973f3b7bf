"""The store-free export of a suite: its benchmark runs and the searches behind its searched configs, one CSV row per
run (params, tags, final metrics), and benchmark records read back from that CSV so tables rebuild without MLflow.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from benchmarks.errors import ResultsError
from benchmarks.tracking.queries import BENCHMARK_KIND, search_all_runs, search_benchmark_runs
from results.output import write_atomic
from results.runs import RUN_COLUMNS, require_store

if TYPE_CHECKING:
    from mlflow.entities import Experiment, Run
    from mlflow.tracking import MlflowClient

    from benchmarks.tracking.store import TrackingStore

SEARCH_KINDS = ("search", "trial", "refit")
# Of MLflow's own tags only these two become columns; the rest (user name, source file, the machine's git commit)
# say nothing about the result and may name people or paths.
_PARENT_TAG, _NAME_TAG = "mlflow.parentRunId", "mlflow.runName"


def export_rows(store: TrackingStore, experiment: str, suite: str) -> list[dict[str, str]]:
    """Rows of every run of `suite` (any status) and of every search, trial and refit of the suite's
    (dataset, model, pred_len) cells, sorted by kind, dataset, model, horizon, seed and start time."""
    client, found = _experiment(store, experiment)
    benchmark = search_all_runs(client, found.experiment_id,
                                f"tags.`mixbench.kind` = '{BENCHMARK_KIND}' and tags.suite = '{suite}'")
    if not benchmark:
        suites = sorted({run.data.tags.get("suite", "") for run in search_benchmark_runs(client, found.experiment_id)})
        raise ResultsError(f"suite '{suite}' has no runs in experiment '{experiment}'; {{setting}} must be one of: "
                           f"{', '.join(suites) or '(none: run `mixbench benchmark` first)'}", setting="suite")
    cells = {_cell(run) for run in benchmark}
    searches = [run for run in search_all_runs(client, found.experiment_id, "tags.`mixbench.kind` = 'search'")
                if _cell(run) in cells]
    runs = sorted(benchmark + searches + _search_children(client, found.experiment_id, searches), key=_order)
    return [_row(run) for run in runs]


def export_search_rows(store: TrackingStore, experiment: str) -> list[dict[str, str]]:
    """Rows of every search of `experiment` and of its trials and refits, in the order of `export_rows`."""
    client, found = _experiment(store, experiment)
    searches = search_all_runs(client, found.experiment_id, "tags.`mixbench.kind` = 'search'")
    if not searches:
        raise ResultsError(f"experiment '{experiment}' at {store.redacted} holds no search; run `mixbench search` "
                           "first or pass the right {setting}", setting="experiment")
    return [_row(run) for run in sorted(searches + _search_children(client, found.experiment_id, searches), key=_order)]


def _experiment(store: TrackingStore, experiment: str) -> tuple[MlflowClient, Experiment]:
    require_store(store)
    client = store.client()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise ResultsError(f"no experiment '{experiment}' at {store.redacted}; pass the right {{setting}} or tracking "
                           "URI", setting="experiment")
    return client, found


def _search_children(client: MlflowClient, experiment_id: str, searches: list[Run]) -> list[Run]:
    return [run for search in searches
            for run in search_all_runs(client, experiment_id, f"tags.`mlflow.parentRunId` = '{search.info.run_id}'")
            if run.data.tags.get("mixbench.kind") in SEARCH_KINDS[1:]]


def write_export(rows: list[dict[str, str]], path: Path) -> Path:
    """Write `rows` as CSV: the run columns, then tags.*, params.* and metrics.* columns in name order."""
    names = sorted({name for row in rows for name in row} - set(RUN_COLUMNS))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=[*RUN_COLUMNS, *names], restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_atomic(Path(path), text.getvalue())


def _cell(run: Run) -> tuple[str, str, str]:
    tags = run.data.tags
    return tags.get("dataset", ""), tags.get("model", ""), tags.get("pred_len", "")


def _order(run: Run) -> tuple:
    tags = run.data.tags
    kinds = (BENCHMARK_KIND, *SEARCH_KINDS)
    kind = tags.get("mixbench.kind", "")
    return (kinds.index(kind) if kind in kinds else len(kinds), tags.get("dataset", ""), tags.get("model", ""),
            int(tags.get("pred_len") or 0), tags.get("display_name", ""), int(tags.get("seed") or 0),
            run.info.start_time or 0, run.info.run_id)


def _row(run: Run) -> dict[str, str]:
    tags = run.data.tags
    row = {"run_id": run.info.run_id, "parent_run_id": tags.get(_PARENT_TAG, ""), "run_name": tags.get(_NAME_TAG, ""),
           "status": run.info.status, "start_time": str(run.info.start_time or ""),
           "end_time": str(run.info.end_time or "")}
    row.update((f"tags.{key}", value) for key, value in tags.items() if not key.startswith("mlflow."))
    row.update((f"params.{key}", value) for key, value in run.data.params.items())
    row.update((f"metrics.{key}", _number(value)) for key, value in run.data.metrics.items())
    return row


def _number(value: float) -> str:
    return repr(value) if math.isfinite(value) else str(value)


def export_summary(rows: Iterable[dict[str, str]]) -> str:
    """'N runs: a benchmark, b search, ...' for the command's closing line."""
    counts: dict[str, int] = {}
    for row in rows:
        kind = row.get("tags.mixbench.kind", "") or "other"
        counts[kind] = counts.get(kind, 0) + 1
    total = sum(counts.values())
    return f"{total} runs: " + ", ".join(f"{count} {kind}" for kind, count in counts.items())
