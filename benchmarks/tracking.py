"""MLflow tracking: where the store is, and what every experiment run carries (tags, params, metrics, artifacts).

Two ways in, with identical content: `start_run` logs live while training runs (`mixbench train`), and
`log_experiment` logs a finished `ExperimentResult` in one go (the search driver, which owns the store).
"""
from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from benchmarks.errors import InputError

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from benchmarks.engine import ExperimentResult, ExperimentSpec

RUN_KINDS = ("train", "trial", "search", "benchmark", "refit")
EPOCH_METRICS = ("train_loss", "val_loss", "val_mse", "val_mae", "lr", "epoch_seconds", "samples_per_s")
FINAL_METRICS = ("best_val_loss", "best_epoch", "epochs_run", "test_mse", "test_mae")
REPO_ROOT = Path(__file__).resolve().parents[1]

# MLflow's per-request limits for log_batch (mlflow.utils.validation).
_MAX_PARAMS_OR_TAGS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000
_MAX_PARAM_LENGTH = 6000


@dataclass
class TrackingConfig:
    """Where and how an experiment is logged to MLflow.

    `uri=None` resolves as `resolve_tracking_uri` says. `kind` is the `mixbench.kind` tag. `tags` are added last,
    so they override the standard tags (e.g. `{"protocol": "tslib-M-Lsearched"}` when the lookback was searched).
    """

    uri: str | None = None
    experiment: str = "mixbench"
    run_name: str | None = None
    parent_run_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    kind: str = "train"


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The tracking URI to use: `uri` if given, else `$MLFLOW_TRACKING_URI`, else `./mlflow.db` as SQLite.

    Local stores come back absolute (Ray Tune runs each trial in its own working directory): a relative
    `sqlite:///runs.db` or a bare path `runs.db` becomes `sqlite:////abs/runs.db`, another bare path a `file://` URI.
    """
    chosen = uri or os.environ.get("MLFLOW_TRACKING_URI") or ""
    if not chosen:
        return f"sqlite:///{Path.cwd().resolve()}/mlflow.db"
    if chosen.startswith("sqlite:///"):
        path = chosen[len("sqlite:///"):]
        return chosen if path.startswith("/") else f"sqlite:///{Path(path).resolve()}"
    if "://" in chosen or chosen.startswith(("databricks", "file:")):
        if "@" in urllib.parse.urlsplit(chosen).netloc:
            # MLflow prints "View run at <uri>" on every run end, credentials included; keep them off the console.
            os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
        return chosen
    path = Path(chosen).expanduser().resolve()
    return f"sqlite:///{path}" if path.suffix == ".db" else path.as_uri()


def redact_uri(uri: str) -> str:
    """`uri` without a user name or password, safe to print or log."""
    parts = urllib.parse.urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urllib.parse.urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


def check_tracking_uri(uri: str, timeout_s: float = 3.0) -> None:
    """Raise InputError if `uri` is an http(s) tracking server that does not answer within `timeout_s`.

    MLflow itself retries a dead server for minutes; this fails in seconds, before any training starts.
    Any HTTP answer (even 401 or 404) counts: the server is there.
    """
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return
    bare = parts._replace(netloc=parts.netloc.rpartition("@")[2])
    health = urllib.parse.urlunsplit(bare._replace(path=bare.path.rstrip("/") + "/health", query="", fragment=""))
    try:
        with urllib.request.urlopen(health, timeout=timeout_s):
            pass
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise InputError(
            f"--tracking-uri {redact_uri(uri)} does not answer ({reason}); start the server "
            f"(e.g. `mixbench ui`) or pass --tracking-uri sqlite:///mlflow.db"
        ) from None


def config_hash(model: str, model_config: Mapping[str, Any], train_config: Mapping[str, Any]) -> str:
    """A 12-hex-digit sha256 prefix identifying the resolved model + training config (the seed is not part of it)."""
    payload = json.dumps({"model": model, "model_config": model_config, "train": train_config}, sort_keys=True,
                         default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


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


def protocol_tag(features: str, seq_len: int | None) -> str:
    """The `protocol` tag: `tslib-<features>-L<seq_len>`, or `-Lsearched` when the lookback was searched (None)."""
    return f"tslib-{features}-L{'searched' if seq_len is None else seq_len}"


def run_tags(spec: ExperimentSpec, model_config: Mapping[str, Any], train_config: Mapping[str, Any],
             tracking: TrackingConfig) -> dict[str, str]:
    """The tags of an experiment run (docs/architecture.md, "What every MLflow run carries")."""
    tags = {
        "mixbench.kind": tracking.kind,
        "dataset": spec.dataset,
        "model": spec.model,
        "pred_len": str(spec.pred_len),
        "seq_len": str(spec.seq_len),
        "protocol": protocol_tag(spec.features, spec.seq_len),
        "seed": str(spec.seed),
        "config_hash": config_hash(spec.model, model_config, train_config),
    }
    if tracking.parent_run_id:
        tags["mlflow.parentRunId"] = tracking.parent_run_id
    tags.update({key: str(value) for key, value in tracking.tags.items()})
    return tags


def run_params(spec: ExperimentSpec, model_config: Mapping[str, Any], train_config: Mapping[str, Any],
               data_config: Mapping[str, Any]) -> dict[str, str]:
    """The params of an experiment run: `model.*`, `train.*`, `data.*`, `seed` and `code_version`."""
    params = {f"model.{key}": value for key, value in model_config.items()}
    params.update({f"train.{key}": value for key, value in train_config.items()})
    params.update({f"data.{key}": value for key, value in data_config.items()})
    params.update({"seed": spec.seed, "code_version": code_version()})
    return {key: str(value)[:_MAX_PARAM_LENGTH] for key, value in params.items()}


def final_metrics(result: ExperimentResult) -> dict[str, float]:
    """The metrics logged once at the end of a run."""
    return {name: float(getattr(result, name)) for name in FINAL_METRICS}


class TrackedRun:
    """One MLflow run of an experiment, created with its tags and params; epochs and the end are logged onto it."""

    def __init__(self, client: MlflowClient, run_id: str, uri: str) -> None:
        self.client = client
        self.run_id = run_id
        self.uri = uri

    def log_epochs(self, rows: list[dict[str, float]]) -> None:
        """Log history rows (keys `epoch` and EPOCH_METRICS) as metrics with step = epoch."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(name, float(row[name]), now, int(row["epoch"])) for row in rows for name in EPOCH_METRICS]
        for start in range(0, len(metrics), _MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[start:start + _MAX_METRICS_PER_BATCH])

    def finish(self, result: ExperimentResult) -> None:
        """Log the final metrics and every file under `result.artifact_dir`, then mark the run FINISHED."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(name, value, now, 0) for name, value in final_metrics(result).items()]
        self.client.log_batch(self.run_id, metrics=metrics)
        if result.artifact_dir is not None:
            self.client.log_artifacts(self.run_id, str(result.artifact_dir))
        self.client.set_terminated(self.run_id, status="FINISHED")

    def fail(self, status: str = "FAILED") -> None:
        """Mark the run FAILED (training raised) or KILLED (interrupted)."""
        self.client.set_terminated(self.run_id, status=status)


def start_run(tracking: TrackingConfig, spec: ExperimentSpec, model_config: Mapping[str, Any],
              train_config: Mapping[str, Any], data_config: Mapping[str, Any]) -> TrackedRun:
    """Create the run (status RUNNING) in `tracking.experiment` with all its tags and params."""
    from mlflow.entities import Param

    if tracking.kind not in RUN_KINDS:
        raise InputError(f"tracking kind {tracking.kind!r} is unknown; use one of {', '.join(RUN_KINDS)}")
    uri = resolve_tracking_uri(tracking.uri)
    check_tracking_uri(uri)
    client = tracking_client(uri)
    experiment_id = get_or_create_experiment(client, tracking.experiment, uri)
    run_name = tracking.run_name or f"{spec.model}-{spec.dataset}-{spec.pred_len}-s{spec.seed}"
    tags = run_tags(spec, model_config, train_config, tracking)
    run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    params = [Param(key, value) for key, value in run_params(spec, model_config, train_config, data_config).items()]
    for start in range(0, len(params), _MAX_PARAMS_OR_TAGS_PER_BATCH):
        client.log_batch(run.info.run_id, params=params[start:start + _MAX_PARAMS_OR_TAGS_PER_BATCH])
    return TrackedRun(client, run.info.run_id, uri)


def log_experiment(result: ExperimentResult, tracking: TrackingConfig) -> str:
    """Log a finished experiment (tags, params, every epoch, final metrics, artifacts) as one run; its run id."""
    run = start_run(tracking, result.spec, result.model_config, result.train_config, result.data_config)
    try:
        run.log_epochs(result.history)
        run.finish(result)
    except BaseException:
        run.fail()
        raise
    return run.run_id


def tracking_client(uri: str) -> MlflowClient:
    """An MlflowClient for `uri`. Every command opens its store through this, so a fresh SQLite store is created
    once."""
    from mlflow import MlflowClient

    if not uri.startswith("sqlite:///"):
        return MlflowClient(tracking_uri=uri)
    database = Path(uri[len("sqlite:///"):])
    database.parent.mkdir(parents=True, exist_ok=True)
    # A client creates and migrates a SQLite store's tables; processes doing it at once (two `mixbench train` in one
    # folder, eight searches started together on a fresh store) fail with "duplicate column", "no such index" or
    # alembic errors, so clients of one store are made one at a time.
    with open(database.with_name(database.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return MlflowClient(tracking_uri=uri)


def get_or_create_experiment(client: MlflowClient, name: str, uri: str) -> str:
    """The id of experiment `name`, created if missing; a SQLite store keeps artifacts beside its database file."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            raise InputError(f"MLflow experiment {name!r} is deleted; restore it in the UI or use another experiment")
        return experiment.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:
        # Another process (a parallel trial) created it between our lookup and create.
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id
