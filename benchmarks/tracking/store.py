"""Where MLflow runs live: the tracking URI, resolved and (for a server) health-probed once per process, and the
clients and experiments of that store. The only place a `sqlite:///` URI is taken apart.
"""
from __future__ import annotations

import fcntl
import functools
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from benchmarks.errors import TrackingError

SQLITE_PREFIX = "sqlite:///"
PROBE_TIMEOUT_S = 3.0
# MLflow prints "View run at <uri>" whenever a run on a server ends, credentials included; this turns that off.
QUIET_RUN_URLS_ENV = {"MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
# MLflow 3's UI opens an experiment by its kind: a model-training experiment opens on its runs, not on the GenAI
# overview (traces), where a newcomer would see "no data".
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


@dataclass(frozen=True)
class TrackingStore:
    """A resolved MLflow store (`uri` absolute for local stores; a server answered its health probe).

    Picklable: Ray workers receive it and open clients on it without resolving or probing again.
    """

    uri: str

    @classmethod
    def resolve(cls, uri: str | None = None, *, probe: bool = True) -> TrackingStore:
        """The store to use: `uri` if given, else `$MLFLOW_TRACKING_URI`, else `./mlflow.db` as SQLite.

        Local stores come back absolute (Ray Tune runs each trial in its own working directory): a relative
        `sqlite:///runs.db` or a bare path `runs.db` becomes `sqlite:////abs/runs.db`, another bare path a `file://`
        URI. An http(s) server is probed once per process (unless `probe=False`, for a caller that only needs to know
        what the URI names); TrackingError if it does not answer.
        """
        store = cls(_absolute(uri or os.environ.get("MLFLOW_TRACKING_URI") or ""))
        if probe and store.is_server:
            _probe(store.uri)
        return store

    @property
    def is_server(self) -> bool:
        """True for an http(s) tracking server."""
        return urllib.parse.urlsplit(self.uri).scheme in ("http", "https")

    @property
    def sqlite_path(self) -> Path | None:
        """The database file of a SQLite store; None for any other store."""
        return Path(self.uri[len(SQLITE_PREFIX):]) if self.uri.startswith(SQLITE_PREFIX) else None

    @property
    def redacted(self) -> str:
        """The URI without user name or password, safe to print or log."""
        return redact_uri(self.uri)

    def client(self) -> MlflowClient:
        """An MlflowClient on this store. A SQLite store's clients are made one at a time (see below)."""
        database = self.sqlite_path
        if database is None:
            return MlflowClient(tracking_uri=self.uri)
        database.parent.mkdir(parents=True, exist_ok=True)
        # A client creates and migrates a SQLite store's tables; processes doing it at once (two `mixbench train` in
        # one folder, eight searches started together on a fresh store) fail with "duplicate column", "no such index"
        # or alembic errors.
        with open(database.with_name(database.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return MlflowClient(tracking_uri=self.uri)

    def experiment_id(self, name: str, create: bool = True) -> str | None:
        """The id of MLflow experiment `name`; created if missing when `create` (a SQLite store keeps its artifacts
        beside the database file), else None when missing. TrackingError if the experiment is deleted."""
        client = self.client()
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            if experiment.lifecycle_stage == "deleted":
                raise TrackingError(f"MLflow experiment {name!r} is deleted; restore it in the UI or use another "
                                    "experiment", setting="experiment")
            if experiment.tags.get(EXPERIMENT_KIND_TAG) is None:
                client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            return experiment.experiment_id
        if not create:
            return None
        database = self.sqlite_path
        location = (database.parent / "mlartifacts").as_uri() if database is not None else None
        try:
            return client.create_experiment(name, artifact_location=location,
                                            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except MlflowException:
            # Another process (a parallel trial) created it between our lookup and create.
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return experiment.experiment_id


def redact_uri(uri: str) -> str:
    """`uri` without a user name or password, safe to print or log."""
    parts = urllib.parse.urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urllib.parse.urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


def quiet_run_urls() -> None:
    """Keep MLflow from printing run URLs (credentials included) to stdout in this process and the processes it
    starts, nor log its store set-up ("Creating initial MLflow database tables...") on every new local store. For the
    CLI to call once at start: the library itself sets no environment."""
    os.environ.update(QUIET_RUN_URLS_ENV)
    for name in ("mlflow.store.db.utils", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _absolute(chosen: str) -> str:
    if not chosen:
        return f"{SQLITE_PREFIX}{Path.cwd().resolve()}/mlflow.db"
    if chosen.startswith(SQLITE_PREFIX):
        path = chosen[len(SQLITE_PREFIX):]
        return chosen if path.startswith("/") else f"{SQLITE_PREFIX}{Path(path).resolve()}"
    if "://" in chosen or chosen.startswith(("databricks", "file:")):
        return chosen
    path = Path(chosen).expanduser().resolve()
    return f"{SQLITE_PREFIX}{path}" if path.suffix == ".db" else path.as_uri()


@functools.cache
def _probe(uri: str) -> None:
    """Raise TrackingError if the server at `uri` does not answer `/health` within PROBE_TIMEOUT_S; remembered per
    process once it answered (a failure is not, so a server started later is found).

    MLflow itself retries a dead server for minutes; this fails in seconds, before any training starts. Any HTTP
    answer (even 401 or 404) counts: the server is there.
    """
    parts = urllib.parse.urlsplit(uri)
    bare = parts._replace(netloc=parts.netloc.rpartition("@")[2])
    health = urllib.parse.urlunsplit(bare._replace(path=bare.path.rstrip("/") + "/health", query="", fragment=""))
    try:
        with urllib.request.urlopen(health, timeout=PROBE_TIMEOUT_S):
            pass
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise TrackingError(f"{{setting}} {redact_uri(uri)} does not answer ({reason}); {_start_hint(bare)} "
                            "or pass {setting} sqlite:///mlflow.db", setting="tracking_uri") from None


def _start_hint(parts: urllib.parse.SplitResult) -> str:
    """How to bring up the server at `parts`: a command only where one can serve that address (plain http on
    127.0.0.1 or localhost with an explicit port, where `mlflow server` listens by default). Not `mixbench ui`: it
    refuses an http store ($MLFLOW_TRACKING_URI may be this one) and a store file that does not exist yet; `mlflow
    server` creates the file."""
    if parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost") and parts.port is not None:
        return f"start one there (`mlflow server --backend-store-uri sqlite:///mlflow.db --port {parts.port}`)"
    return "check that the server is running and reachable from here"
