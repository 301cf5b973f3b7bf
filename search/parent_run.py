"""The MLflow parent run of a search (mixbench.kind=search): its tags and params at the start, the best config, best
metrics, Optuna plots and refit statistics at the end. Its id is kept in the Tune experiment folder for `--resume`.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param

from benchmarks.tracking.store import TrackingStore
from benchmarks.tracking.writer import code_version, protocol_tag
from search.trial import FEATURES

# MLflow's per-request limit for params/tags in log_batch.
_BATCH = 100


def param_text(value: Any) -> str:
    """A param value as YAML reads it back (`null`, `true`, numbers, bare words), as benchmarks/grid/configs.py expects."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class ParentRun:
    """The search's parent run in the MLflow store `store`, experiment `experiment`."""

    def __init__(self, store: TrackingStore, experiment: str, run_id: str) -> None:
        self.store = store
        self.experiment = experiment
        self.run_id = run_id
        self.client = store.client()

    @classmethod
    def create(cls, store: TrackingStore, experiment: str, name: str, *, dataset: str, model: str, pred_len: int,
               seq_len: int | None, seed: int, params: dict[str, Any]) -> ParentRun:
        """Create the parent run (RUNNING) with the search tags; `seq_len=None` means the lookback is searched."""
        # The same experiment lookup/creation as every other run (artifacts beside a SQLite store's file).
        experiment_id = store.experiment_id(experiment)
        tags = {"mixbench.kind": "search", "dataset": dataset, "model": model, "pred_len": str(pred_len),
                "seq_len": "searched" if seq_len is None else str(seq_len),
                "protocol": protocol_tag(FEATURES, seq_len), "seed": str(seed), "search_name": name}
        run_id = store.client().create_run(experiment_id, run_name=name, tags=tags).info.run_id
        parent = cls(store, experiment, run_id)
        parent.log_params({**params, "seed": seed, "code_version": code_version()})
        return parent

    def log_params(self, params: dict[str, Any]) -> None:
        """Log params not logged yet (a resumed search logs its summary again; MLflow params are write-once)."""
        existing = self.client.get_run(self.run_id).data.params
        items = [Param(key, param_text(value)[:6000]) for key, value in params.items() if key not in existing]
        for start in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, params=items[start:start + _BATCH])

    def log_metrics(self, metrics: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id,
                              metrics=[Metric(key, float(value), now, 0) for key, value in metrics.items()])

    def set_tags(self, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), folder)

    def status(self) -> str:
        return self.client.get_run(self.run_id).info.status

    def reopen(self) -> None:
        """Mark a resumed search RUNNING again (an interrupted one was left KILLED)."""
        if self.status() != "RUNNING":
            self.client.update_run(self.run_id, status="RUNNING")

    def end(self, status: str) -> None:
        """FINISHED, FAILED or KILLED."""
        self.client.set_terminated(self.run_id, status=status)
