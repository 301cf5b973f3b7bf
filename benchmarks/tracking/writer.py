"""The one MLflow run writer: an experiment's run created with its tags and params (docs/architecture.md, "What every
MLflow run carries"), then its epochs, final metrics, artifacts and end status logged onto it.
"""
from __future__ import annotations

import functools
import json
import subprocess
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Iterable, Mapping

from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from benchmarks.data.registry import split_bounds
from benchmarks.errors import TrackingError
from benchmarks.experiment import Experiment
from benchmarks.tracking.store import TrackingStore
from benchmarks.training.callbacks import EPOCH_METRICS, ExperimentResult, is_test_complete

TEST_WINDOWS_TAG = "test_windows"
TEST_COMPLETE_TAG = "test_complete"
RUN_KINDS = ("train", "trial", "search", "benchmark", "refit")
REPO_ROOT = Path(__file__).resolve().parents[2]

# MLflow's per-request limits for log_batch (mlflow.utils.validation).
_MAX_PARAMS_OR_TAGS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000
_MAX_PARAM_LENGTH = 6000
_MAX_DATASET_DIGEST = 36
_DATASET_INPUT_ATTEMPTS = 5


class RunWriter:
    """One MLflow run of an experiment: created with its tags and params (`create`) or found again (`reopen`)."""

    def __init__(self, store: TrackingStore, client: MlflowClient, run_id: str) -> None:
        self.store = store
        self.client = client
        self.run_id = run_id

    @classmethod
    def create(cls, store: TrackingStore, experiment_name: str, experiment: Experiment, *, kind: str,
               run_name: str | None = None, parent_run_id: str | None = None,
               tags: Mapping[str, str] | None = None, start_time: float | None = None) -> RunWriter:
        """A new run (status RUNNING) of `experiment` in MLflow experiment `experiment_name`, with every tag and param.

        kind: the `mixbench.kind` tag (one of RUN_KINDS). tags: added last, so they win over the standard tags (e.g.
        `{"protocol": "tslib-M-Lsearched"}` when the lookback was searched). start_time: when the run really started
        (time.time()), for a run logged after the fact; else now. The dataset is logged as the run's input.
        """
        if kind not in RUN_KINDS:
            raise TrackingError(f"run kind {kind!r} is unknown; use one of {', '.join(RUN_KINDS)}")
        client = store.client()
        experiment_id = store.experiment_id(experiment_name)
        run = client.create_run(experiment_id, run_name=run_name or default_run_name(experiment),
                                tags=_run_tags(experiment, kind, parent_run_id, tags or {}),
                                start_time=None if start_time is None else int(start_time * 1000))
        writer = cls(store, client, run.info.run_id)
        _log_dataset_input(client, writer.run_id, dataset_input(experiment))
        params = [Param(key, value) for key, value in _run_params(experiment).items()]
        for start in range(0, len(params), _MAX_PARAMS_OR_TAGS_PER_BATCH):
            client.log_batch(writer.run_id, params=params[start:start + _MAX_PARAMS_OR_TAGS_PER_BATCH])
        return writer

    @classmethod
    def reopen(cls, store: TrackingStore, run_id: str) -> RunWriter:
        """A writer onto the existing run `run_id` (its status is left as it is)."""
        return cls(store, store.client(), run_id)

    def log_epochs(self, rows: Iterable[Mapping[str, float]]) -> None:
        """Log history rows (keys `epoch` and EPOCH_METRICS) as metrics with step = epoch."""
        now = int(time.time() * 1000)
        metrics = [Metric(name, float(row[name]), now, int(row["epoch"])) for row in rows for name in EPOCH_METRICS]
        for start in range(0, len(metrics), _MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[start:start + _MAX_METRICS_PER_BATCH])

    def logged_epochs(self) -> set[int]:
        """The epochs the run already holds (the steps of its `val_loss`)."""
        return {metric.step for metric in self.client.get_metric_history(self.run_id, "val_loss")}

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Log `metrics` at `step`."""
        now = int(time.time() * 1000)
        items = [Metric(name, float(value), now, step) for name, value in metrics.items()]
        for start in range(0, len(items), _MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=items[start:start + _MAX_METRICS_PER_BATCH])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set `tags` (values as text) on the run."""
        items = [RunTag(key, str(value)) for key, value in tags.items()]
        for start in range(0, len(items), _MAX_PARAMS_OR_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, tags=items[start:start + _MAX_PARAMS_OR_TAGS_PER_BATCH])

    def finish(self, result: ExperimentResult, *, after_the_fact: bool = False) -> None:
        """Log the final metrics, the test's coverage tags and every file under `result.artifact_dir`, then mark the
        run FINISHED (at the result's own end time when logged `after_the_fact`)."""
        self.log_metrics(result.final_metrics())
        self.set_tags(coverage_tags(result.test_windows, result.test_windows_total))
        self.client.log_artifacts(self.run_id, str(result.artifact_dir))
        self.end("FINISHED", result.ended_at if after_the_fact and result.ended_at else None)

    def fail(self, status: str = "FAILED") -> None:
        """Mark the run FAILED (training raised) or KILLED (interrupted)."""
        self.end(status)

    def end(self, status: str, end_time: float | None = None) -> None:
        """End the run as `status` (FINISHED, FAILED or KILLED), at `end_time` (time.time()) or now."""
        self.client.set_terminated(self.run_id, status=status,
                                   end_time=None if end_time is None else int(end_time * 1000))


def coverage_tags(windows: int, total: int) -> dict[str, str]:
    """`test_windows` ("<scored>/<total>") and `test_complete` ("true", or "false" when train.limit_eval_batches
    capped the test pass): leaderboards and tables leave incomplete tests out unless asked."""
    return {TEST_WINDOWS_TAG: f"{windows}/{total}",
            TEST_COMPLETE_TAG: "true" if is_test_complete(windows, total) else "false"}


def _log_dataset_input(client: MlflowClient, run_id: str, dataset: DatasetInput) -> None:
    """Log `dataset` as the run's input. MLflow stores a dataset once per experiment: runs that start together race to
    insert the same row, and the losers get an integrity error although the row now exists, so they try again."""
    for attempt in range(_DATASET_INPUT_ATTEMPTS):
        try:
            client.log_inputs(run_id, datasets=[dataset])
            return
        except MlflowException:
            if attempt == _DATASET_INPUT_ATTEMPTS - 1:
                raise
            time.sleep(0.1 * (attempt + 1))


def dataset_input(experiment: Experiment) -> DatasetInput:
    """The run's dataset as an MLflow dataset input: name, digest (the file's sha256, cut to MLflow's 36
    characters; the whole hash is the input's `sha256` tag and the `data.sha256` param), source (the CSV's path)
    and a profile with the rows and the windows of each split under the run's protocol."""
    data = experiment.data
    spec = data.spec
    protocol = experiment.protocol
    bounds = split_bounds(spec.split_rule, spec.n_rows, protocol.seq_len)
    profile = {"rows": spec.n_rows, "columns": spec.n_channels, "split_rule": spec.split_rule,
               **{f"{split}_windows": max(0, end - start - protocol.seq_len - protocol.pred_len + 1)
                  for split, (start, end) in bounds.items()}}
    dataset = Dataset(name=data.name, digest=data.sha256[:_MAX_DATASET_DIGEST], source_type="local",
                      source=json.dumps({"uri": str(data.path)}), profile=json.dumps(profile))
    return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "train"), InputTag("sha256", data.sha256)])


def default_run_name(experiment: Experiment) -> str:
    """`<model>-<dataset>-<pred_len>-s<seed>`."""
    return f"{experiment.model}-{experiment.dataset}-{experiment.pred_len}-s{experiment.seed}"


def protocol_tag(features: str, seq_len: int | None) -> str:
    """The `protocol` tag: `tslib-<features>-L<seq_len>`, or `-Lsearched` when the lookback was searched (None)."""
    return f"tslib-{features}-L{'searched' if seq_len is None else seq_len}"


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The package version plus the git commit of this checkout when there is one, e.g. `0.1.0+g1a2b3c4d5e6f`."""
    try:
        base = version("mixbench")
    except PackageNotFoundError:  # running from a checkout that is not pip-installed
        base = "0.1.0"
    try:
        commit = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short=12", "HEAD"],
                                capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return base
    return f"{base}+g{commit}" if commit else base


def _run_tags(experiment: Experiment, kind: str, parent_run_id: str | None,
              extra: Mapping[str, str]) -> dict[str, str]:
    tags = {
        "mixbench.kind": kind,
        "dataset": experiment.dataset,
        "model": experiment.model,
        "pred_len": str(experiment.pred_len),
        "seq_len": str(experiment.seq_len),
        "protocol": protocol_tag(experiment.protocol.features, experiment.seq_len),
        "seed": str(experiment.seed),
        "config_hash": experiment.config_hash(),
    }
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    tags.update({key: str(value) for key, value in extra.items()})
    return tags


def _run_params(experiment: Experiment) -> dict[str, str]:
    """`model.<field>` for every model-config field (protocol fields included), `train.*`, `data.*`, `seed` and
    `code_version`; values as text, cut to MLflow's length limit."""
    params: dict[str, Any] = {f"model.{key}": value for key, value in experiment.model_config_dict().items()}
    params.update({key: value for key, value in experiment.settings().items() if key.startswith("train.")})
    params.update(experiment.data_settings())
    params.update({"seed": experiment.seed, "code_version": code_version()})
    return {key: str(value)[:_MAX_PARAM_LENGTH] for key, value in params.items()}
