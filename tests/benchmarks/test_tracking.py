"""MLflow tracking against a real SQLite store: the store resolved and probed once, the tags and params of a run
byte-identical to what earlier versions logged, and the MLflow callback's lifecycle (finished, failed, killed, resumed),
identical whether logged live or after the fact."""
from __future__ import annotations

import http.server
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from benchmarks.data.files import resolve_dataset
from benchmarks.errors import TrackingError
from benchmarks.experiment import Experiment, resolve_experiment
from benchmarks.tracking.callback import MLflowCallback, log_result
from benchmarks.tracking.store import QUIET_RUN_URLS_ENV, TrackingStore, quiet_run_urls, redact_uri
from benchmarks.tracking.writer import RunWriter, code_version, protocol_tag
from benchmarks.training.callbacks import EPOCH_METRICS, EpochReport, TrainingCallback
from benchmarks.training.engine import run_experiment

ETTH1_SHA256 = "f18de3ad269cef59bb07b5438d79bb3042d3be49bdeecf01c1cd6d29695ee066"
TINY = {"train.epochs": 2, "train.batch_size": 16, "train.limit_train_batches": 2, "train.limit_eval_batches": 1}


def tiny_experiment(data_dir: Path, **settings) -> Experiment:
    return resolve_experiment("dlinear", resolve_dataset("ETTh1", data_dir), pred_len=24, seq_len=48, seed=3,
                              settings={**TINY, **settings}, device="cpu")


def sqlite_store(folder: Path) -> TrackingStore:
    return TrackingStore.resolve(f"sqlite:///{folder}/mlflow.db")


def artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    found = []
    for item in client.list_artifacts(run_id, path):
        found.extend(artifact_paths(client, run_id, item.path) if item.is_dir else [item.path])
    return sorted(found)


def own_tags(run) -> dict[str, str]:
    """The run's tags without MLflow's own (user, source, run name), but with the parent link."""
    return {key: value for key, value in run.data.tags.items()
            if not key.startswith("mlflow.") or key == "mlflow.parentRunId"}


def run_content(client: MlflowClient, run_id: str) -> dict:
    run = client.get_run(run_id)
    histories = {name: [(metric.step, metric.value) for metric in client.get_metric_history(run_id, name)]
                 for name in run.data.metrics}
    return {"status": run.info.status, "tags": own_tags(run), "params": run.data.params, "metrics": histories,
            "artifacts": artifact_paths(client, run_id), "name": run.info.run_name}


def only_run(store: TrackingStore, experiment_name: str):
    client = store.client()
    (run,) = client.search_runs([store.experiment_id(experiment_name, create=False)])
    return run


class Abort(TrainingCallback):
    """Raises `error` after the first epoch."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def on_epoch(self, report: EpochReport) -> None:
        raise self.error


class KeepState(TrainingCallback):
    """Keeps the checkpoint of epoch `epoch`."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.state: dict | None = None

    def on_epoch(self, report: EpochReport) -> None:
        if report.epoch == self.epoch:
            self.state = report.state()


class CountingServer:
    """A tiny HTTP server on 127.0.0.1 that answers /health with 200 and counts the requests it gets."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        paths = self.paths

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                paths.append(self.path)
                self.send_response(200 if self.path == "/health" else 404)
                self.end_headers()
                self.wfile.write(b"OK")

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.uri = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> CountingServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def logged(shared_data_dir, tmp_path_factory):
    """One experiment logged live by MLflowCallback and again after the fact by log_result."""
    folder = tmp_path_factory.mktemp("store")
    store = sqlite_store(folder)
    callback = MLflowCallback(store, "tests", kind="train")
    result = run_experiment(tiny_experiment(shared_data_dir), callbacks=[callback], artifact_dir=folder / "artifacts")
    again = log_result(store, "tests", result, kind="train")
    return store, result, callback.run_id, again


# --- where the store is ---------------------------------------------------------------------------------------------

def test_resolution_order_is_argument_then_environment_then_cwd_database(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert TrackingStore.resolve().uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert TrackingStore.resolve(None).uri.startswith("sqlite:////")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////data/env.db")
    assert TrackingStore.resolve().uri == "sqlite:////data/env.db"
    assert TrackingStore.resolve("sqlite:////data/runs.db").uri == "sqlite:////data/runs.db"


def test_local_stores_become_absolute(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    root = tmp_path.resolve()
    assert TrackingStore.resolve("sqlite:///runs/m.db").uri == f"sqlite:///{root}/runs/m.db"
    assert TrackingStore.resolve("m.db").uri == f"sqlite:///{root}/m.db"
    assert TrackingStore.resolve("mlruns").uri == (root / "mlruns").as_uri()
    assert TrackingStore.resolve("postgresql://bob:pw@db/mlflow").uri == "postgresql://bob:pw@db/mlflow"


def test_the_store_knows_its_kind_and_its_sqlite_file(tmp_path):
    local = TrackingStore.resolve(f"sqlite:///{tmp_path}/sub/m.db")
    assert local.sqlite_path == tmp_path / "sub" / "m.db" and not local.is_server
    assert TrackingStore.resolve((tmp_path / "mlruns").as_uri()).sqlite_path is None
    remote = TrackingStore("https://alice:s3cret@mlflow.example.com:8443/x")  # not resolved: nothing is probed
    assert remote.is_server and remote.sqlite_path is None
    assert remote.redacted == "https://***@mlflow.example.com:8443/x"


def test_resolving_creates_nothing_and_sets_no_environment(tmp_path):
    environment = dict(os.environ)
    TrackingStore.resolve(f"sqlite:///{tmp_path}/new/mlflow.db")
    assert not (tmp_path / "new").exists()
    with CountingServer() as server:
        TrackingStore.resolve(server.uri.replace("http://", "http://alice:pw@"))
    assert dict(os.environ) == environment


def test_quiet_run_urls_is_the_cli_switch_for_mlflows_url_printing(monkeypatch):
    for name in QUIET_RUN_URLS_ENV:
        monkeypatch.delenv(name, raising=False)   # restored when the test ends
    quiet_run_urls()
    assert {name: os.environ[name] for name in QUIET_RUN_URLS_ENV} == {
        "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}


def test_redact_strips_user_and_password():
    assert redact_uri("https://alice:s3cret@mlflow.example.com:8443/x") == "https://***@mlflow.example.com:8443/x"
    assert redact_uri("postgresql://bob:pw@db/mlflow") == "postgresql://***@db/mlflow"
    assert redact_uri("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"


def test_a_server_that_does_not_answer_is_a_one_line_tracking_error():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again below: nothing listens there
    with pytest.raises(TrackingError) as error:
        TrackingStore.resolve(f"http://alice:s3cret@127.0.0.1:{port}")
    assert error.value.setting == "tracking_uri"
    message = error.value.render(lambda setting: "--" + setting.replace("_", "-"))
    assert "\n" not in message and message.startswith(f"--tracking-uri http://***@127.0.0.1:{port} does not answer")
    assert message.endswith("or pass --tracking-uri sqlite:///mlflow.db")
    assert "s3cret" not in message and "alice" not in message


def unanswered_uri_message(uri: str) -> str:
    with pytest.raises(TrackingError) as error:
        TrackingStore.resolve(uri)
    return error.value.render(lambda setting: "--" + setting.replace("_", "-"))


@pytest.mark.slow
def test_the_fix_named_for_a_local_server_that_does_not_answer_starts_it(tmp_path):
    """The hint's command works where the user is: not `mixbench ui`, which refuses an http store (here
    $MLFLOW_TRACKING_URI) and a store file that does not exist yet."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    message = unanswered_uri_message(uri)
    command = message.split("`")[1]
    assert command == f"mlflow server --backend-store-uri sqlite:///mlflow.db --port {port}", message
    program, *args = command.split()
    server = subprocess.Popen([str(Path(sys.executable).with_name(program)), *args], cwd=tmp_path,
                              env=os.environ | {"MLFLOW_TRACKING_URI": uri},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                assert TrackingStore.resolve(uri).is_server
                break
            except TrackingError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.5)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert (tmp_path / "mlflow.db").is_file()


@pytest.mark.parametrize("uri", ["http://mlflow.invalid:5000", "https://127.0.0.1:{port}", "http://127.0.0.1"])
def test_a_server_no_local_command_can_start_is_not_given_one(uri):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    message = unanswered_uri_message(uri.format(port=port))
    assert "check that the server is running and reachable from here or pass --tracking-uri sqlite:///mlflow.db" \
        in message
    assert "mixbench ui" not in message and "`" not in message


def test_any_http_answer_counts_as_reachable():
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)  # answers 501
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert TrackingStore.resolve(f"http://127.0.0.1:{server.server_address[1]}").is_server
    finally:
        server.shutdown()
        server.server_close()


def test_a_server_is_probed_once_per_process():
    with CountingServer() as server:
        store = TrackingStore.resolve(server.uri)
        assert TrackingStore.resolve(server.uri) == store
        worker_copy = pickle.loads(pickle.dumps(store))   # what a Ray worker receives
        assert worker_copy == store and worker_copy.uri == server.uri
        worker_copy.client()
        assert server.paths == ["/health"]


def test_experiments_are_created_once_with_artifacts_beside_a_sqlite_file(tmp_path):
    store = sqlite_store(tmp_path / "fresh")
    assert store.experiment_id("tests", create=False) is None
    created = store.experiment_id("tests")
    assert store.experiment_id("tests") == created == store.experiment_id("tests", create=False)
    assert (tmp_path / "fresh" / "mlflow.db").is_file() and (tmp_path / "fresh" / "mlflow.db.lock").is_file()
    location = store.client().get_experiment(created).artifact_location
    assert location == (tmp_path / "fresh" / "mlartifacts").as_uri()


def test_a_deleted_experiment_is_a_tracking_error(tmp_path):
    store = sqlite_store(tmp_path)
    store.client().delete_experiment(store.experiment_id("gone"))
    with pytest.raises(TrackingError, match="'gone' is deleted") as error:
        store.experiment_id("gone")
    assert error.value.setting == "experiment"


# --- what a run carries ---------------------------------------------------------------------------------------------

DLINEAR_TAGS = {"mixbench.kind": "train", "dataset": "ETTh1", "model": "dlinear", "pred_len": "96", "seq_len": "96",
                "protocol": "tslib-M-L96", "seed": "2021", "config_hash": "577fe3a13ae6"}
DLINEAR_PARAMS = {
    "model.seq_len": "96", "model.pred_len": "96", "model.enc_in": "7", "model.moving_avg": "25",
    "model.individual": "False",
    "train.epochs": "10", "train.batch_size": "32", "train.learning_rate": "0.0001", "train.optimizer": "adam",
    "train.weight_decay": "0.0", "train.lradj": "type1", "train.patience": "3", "train.loss": "mse",
    "train.val_metric": "loss", "train.bf16": "False", "train.compile": "False", "train.limit_train_batches": "None",
    "train.limit_eval_batches": "None",
    "data.dataset": "ETTh1", "data.features": "M", "data.target": "OT", "data.seq_len": "96", "data.pred_len": "96",
    "data.sha256": ETTH1_SHA256, "seed": "2021",
}
MIXMAMBA_TAGS = {"mixbench.kind": "benchmark", "dataset": "ETTh1", "model": "mixmamba", "pred_len": "192",
                 "seq_len": "48", "protocol": "tslib-M-L48", "seed": "7", "config_hash": "67e95aec9a10",
                 "suite": "paper"}
MIXMAMBA_PARAMS = {
    "model.seq_len": "48", "model.pred_len": "192", "model.enc_in": "7", "model.d_model": "32",
    "model.patch_len": "16", "model.stride": "8", "model.num_experts": "2", "model.top_k": "2", "model.d_state": "8",
    "model.d_conv": "4", "model.expand": "2", "model.n_layers": "1", "model.dropout": "0.1", "model.use_norm": "True",
    "model.variant": "official", "model.router_noise": "0.0", "model.router_threshold": "0.2",
    "model.capacity_factor_train": "1.25", "model.capacity_factor_eval": "2.0", "model.min_capacity": "8",
    "model.balance_loss_coef": "0.01", "model.z_loss_coef": "0.001", "model.official_slot_offsets": "True",
    "model.scan_backend": "auto",
    "train.epochs": "10", "train.batch_size": "32", "train.learning_rate": "0.001", "train.optimizer": "adamw",
    "train.weight_decay": "0.01", "train.lradj": "type1", "train.patience": "3", "train.loss": "mae",
    "train.val_metric": "loss", "train.bf16": "False", "train.compile": "False", "train.limit_train_batches": "None",
    "train.limit_eval_batches": "2",
    "data.dataset": "ETTh1", "data.features": "M", "data.target": "OT", "data.seq_len": "48", "data.pred_len": "192",
    "data.sha256": ETTH1_SHA256, "seed": "7",
}


def test_a_run_carries_the_tags_and_params_earlier_versions_logged(shared_data_dir, tmp_path):
    """Byte-identical to the tags and params of the single-module tracking (commit d8c71c0) for the same experiments,
    so committed exports and config hashes still match."""
    store = sqlite_store(tmp_path)
    data = resolve_dataset("ETTh1", shared_data_dir)
    dlinear = RunWriter.create(store, "tests", resolve_experiment("dlinear", data, pred_len=96), kind="train")
    mixmamba = resolve_experiment("mixmamba", data, pred_len=192, seq_len=48, seed=7,
                                  settings={"model.d_model": 32, "train.learning_rate": 1e-3,
                                            "train.limit_eval_batches": 2})
    benchmark = RunWriter.create(store, "tests", mixmamba, kind="benchmark", run_name="paper/cell",
                                 tags={"suite": "paper"})
    client = store.client()
    for writer, tags, params, name in ((dlinear, DLINEAR_TAGS, DLINEAR_PARAMS, "dlinear-ETTh1-96-s2021"),
                                       (benchmark, MIXMAMBA_TAGS, MIXMAMBA_PARAMS, "paper/cell")):
        run = client.get_run(writer.run_id)
        assert own_tags(run) == tags
        assert run.data.params == {**params, "code_version": code_version()}
        assert run.info.run_name == name and run.info.status == "RUNNING"


def test_child_runs_nest_under_their_parent_and_caller_tags_win(shared_data_dir, tmp_path):
    store = sqlite_store(tmp_path)
    experiment = resolve_experiment("dlinear", resolve_dataset("ETTh1", shared_data_dir), pred_len=96)
    writer = RunWriter.create(store, "tests", experiment, kind="trial", parent_run_id="parent0",
                              tags={"protocol": protocol_tag("M", None), "trial_id": "t1"})
    assert own_tags(store.client().get_run(writer.run_id)) == {
        **DLINEAR_TAGS, "mixbench.kind": "trial", "protocol": "tslib-M-Lsearched", "mlflow.parentRunId": "parent0",
        "trial_id": "t1"}


def test_an_unknown_run_kind_is_a_tracking_error(shared_data_dir, tmp_path):
    experiment = resolve_experiment("dlinear", resolve_dataset("ETTh1", shared_data_dir), pred_len=96)
    with pytest.raises(TrackingError, match="kind 'final' is unknown"):
        RunWriter.create(sqlite_store(tmp_path), "tests", experiment, kind="final")


def test_a_reopened_writer_logs_onto_the_same_run(shared_data_dir, tmp_path):
    store = sqlite_store(tmp_path)
    experiment = resolve_experiment("dlinear", resolve_dataset("ETTh1", shared_data_dir), pred_len=96)
    first = RunWriter.create(store, "tests", experiment, kind="train")
    first.log_epochs([{"epoch": epoch, **{name: epoch / 10 for name in EPOCH_METRICS}} for epoch in (1, 2)])
    again = RunWriter.reopen(store, first.run_id)
    assert again.logged_epochs() == {1, 2}
    again.log_metrics({"best_val_loss": 0.5, "score": 2})
    again.set_tags({"note": 3})
    again.end("KILLED")
    run = store.client().get_run(first.run_id)
    assert run.info.status == "KILLED" and run.data.tags["note"] == "3"
    assert run.data.metrics["best_val_loss"] == 0.5 and run.data.metrics["val_loss"] == 0.2


# --- the callback ---------------------------------------------------------------------------------------------------

def test_a_live_run_carries_every_epoch_the_final_metrics_and_the_artifacts(logged):
    store, result, run_id, _ = logged
    content = run_content(store.client(), run_id)
    assert content["status"] == "FINISHED" and content["name"] == "dlinear-ETTh1-24-s3"
    assert content["tags"]["config_hash"] == result.experiment.config_hash()
    assert content["params"]["train.epochs"] == "2" and content["params"]["data.seq_len"] == "48"
    for name in EPOCH_METRICS:
        assert [step for step, _ in content["metrics"][name]] == [1, 2]
        assert [value for _, value in content["metrics"][name]] == pytest.approx([row[name] for row in result.history])
    final = result.final_metrics()
    assert {name: content["metrics"][name] for name in final} == {
        name: [(0, pytest.approx(value))] for name, value in final.items()}
    written = sorted(str(path.relative_to(result.artifact_dir)) for path in result.artifact_dir.rglob("*")
                     if path.is_file())
    assert content["artifacts"] == written and "config.yaml" in written


def test_logging_after_the_fact_gives_the_same_content_as_live_logging(logged):
    store, _, run_id, again = logged
    assert again != run_id
    assert run_content(store.client(), again) == run_content(store.client(), run_id)


def test_log_result_takes_the_callers_kind_name_parent_and_tags(logged):
    store, result, run_id, _ = logged
    child = log_result(store, "tests", result, kind="refit", run_name="refit-seed-3", parent_run_id=run_id,
                       tags={"suite": "s"})
    run = store.client().get_run(child)
    assert run.info.run_name == "refit-seed-3" and run.info.status == "FINISHED"
    assert own_tags(run)["mlflow.parentRunId"] == run_id
    assert own_tags(run)["mixbench.kind"] == "refit" and own_tags(run)["suite"] == "s"


@pytest.mark.parametrize(("error", "status"), [(RuntimeError("stop"), "FAILED"), (KeyboardInterrupt(), "KILLED")])
def test_a_run_that_raises_or_is_interrupted_is_marked_so(shared_data_dir, tmp_path, error, status):
    store = sqlite_store(tmp_path)
    with pytest.raises(type(error)):
        run_experiment(tiny_experiment(shared_data_dir), artifact_dir=tmp_path / "a",
                       callbacks=[MLflowCallback(store, "failing", kind="train"), Abort(error)])
    run = only_run(store, "failing")
    assert run.info.status == status
    assert "test_mse" not in run.data.metrics
    assert [metric.step for metric in store.client().get_metric_history(run.info.run_id, "val_loss")] == [1]


def test_a_failure_before_the_start_leaves_no_run(tmp_path):
    store = sqlite_store(tmp_path)
    callback = MLflowCallback(store, "never", kind="train")
    callback.on_failure(RuntimeError("data missing"))
    assert callback.run_id is None and store.experiment_id("never", create=False) is None


def test_a_resumed_run_logs_each_epoch_once(shared_data_dir, tmp_path):
    store = sqlite_store(tmp_path)
    experiment = tiny_experiment(shared_data_dir, **{"train.epochs": 3, "train.patience": 5})
    keep = KeepState(epoch=2)
    run_experiment(experiment, callbacks=[keep], artifact_dir=tmp_path / "first")
    assert keep.state is not None

    fresh = MLflowCallback(store, "resumed", kind="train")
    result = run_experiment(experiment, callbacks=[fresh], resume_state=keep.state, artifact_dir=tmp_path / "fresh")
    client = store.client()
    history = client.get_metric_history(fresh.run_id, "val_loss")
    assert sorted(metric.step for metric in history) == [1, 2, 3]
    assert [metric.value for metric in sorted(history, key=lambda metric: metric.step)] == pytest.approx(
        [row["val_loss"] for row in result.history])

    # A run created elsewhere that already holds epochs 1-2 (a trial resumed onto its own run) gets only epoch 3.
    writer = RunWriter.create(store, "resumed", experiment, kind="trial")
    writer.log_epochs(result.history[:2])
    onto = MLflowCallback(writer)
    run_experiment(experiment, callbacks=[onto], resume_state=keep.state, artifact_dir=tmp_path / "onto")
    for name in EPOCH_METRICS:
        assert sorted(metric.step for metric in client.get_metric_history(writer.run_id, name)) == [1, 2, 3]
    assert client.get_run(writer.run_id).info.status == "FINISHED"



def test_experiments_are_model_training_experiments_old_ones_included(tmp_path):
    store = sqlite_store(tmp_path)
    client = store.client()
    fresh = client.get_experiment(store.experiment_id("fresh"))
    assert fresh.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on its runs
    old = client.create_experiment("old")  # as MixBench created them before, without a kind
    assert store.experiment_id("old") == old
    assert client.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"


def test_a_run_logged_after_the_fact_keeps_its_true_times_dataset_and_test_coverage(logged):
    store, result, _, _ = logged
    client = store.client()
    run = client.get_run(log_result(store, "tests", result, kind="benchmark"))
    assert run.info.start_time == int(result.started_at * 1000) and run.info.end_time == int(result.ended_at * 1000)
    assert result.ended_at > result.started_at
    assert run.data.tags["test_complete"] == "false"  # limit_eval_batches 1 at batch size 16
    assert run.data.tags["test_windows"] == f"16/{result.test_windows_total}"
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.name == "ETTh1" and dataset_input.dataset.digest == ETTH1_SHA256[:36]
    assert {tag.key: tag.value for tag in dataset_input.tags}["sha256"] == ETTH1_SHA256
    assert '"train_windows": 8569' in dataset_input.dataset.profile  # 12 months of hours (8640) - 48 - 24 + 1
