"""MLflow tracking against a real SQLite store: URI resolution, unreachable servers, and the content of a run
(tags, params, per-epoch and final metrics, artifacts), identical whether logged live or after the fact."""
from __future__ import annotations

import http.server
import socket
import threading

import pytest
from mlflow import MlflowClient

from benchmarks.engine import ExperimentSpec, run_experiment
from benchmarks.errors import InputError
from benchmarks.tracking import (
    TrackingConfig,
    check_tracking_uri,
    config_hash,
    log_experiment,
    redact_uri,
    resolve_tracking_uri,
)


def tiny_spec(data_dir, **train) -> ExperimentSpec:
    settings = {"epochs": 2, "batch_size": 16, "limit_train_batches": 2, "limit_eval_batches": 1, **train}
    return ExperimentSpec(dataset="etth1", model="dlinear", seq_len=48, pred_len=24, seed=3, device="cpu",
                          data_dir=str(data_dir), train_overrides=settings)


def artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    found = []
    for item in client.list_artifacts(run_id, path):
        found.extend(artifact_paths(client, run_id, item.path) if item.is_dir else [item.path])
    return sorted(found)


def run_content(client: MlflowClient, run_id: str) -> dict:
    run = client.get_run(run_id)
    histories = {name: [(metric.step, metric.value) for metric in client.get_metric_history(run_id, name)]
                 for name in run.data.metrics}
    tags = {key: value for key, value in run.data.tags.items() if not key.startswith("mlflow.") or
            key == "mlflow.parentRunId"}
    return {"status": run.info.status, "tags": tags, "params": run.data.params, "metrics": histories,
            "artifacts": artifact_paths(client, run_id), "name": run.info.run_name}


@pytest.fixture(scope="module")
def logged(shared_data_dir, tmp_path_factory):
    """One experiment logged live by run_experiment and again after the fact by log_experiment."""
    folder = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{folder}/mlflow.db"
    tracking = TrackingConfig(uri=uri, experiment="tests")
    result = run_experiment(tiny_spec(shared_data_dir), artifact_dir=folder / "artifacts", tracking=tracking)
    again = log_experiment(result, tracking)
    return MlflowClient(uri), result, again


def test_resolution_order_is_flag_then_environment_then_cwd_database(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert resolve_tracking_uri(None).startswith("sqlite:////")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert resolve_tracking_uri(None) == "http://tracking.example:5000"
    assert resolve_tracking_uri("sqlite:////data/runs.db") == "sqlite:////data/runs.db"


def test_local_stores_become_absolute(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    root = tmp_path.resolve()
    assert resolve_tracking_uri("sqlite:///runs/m.db") == f"sqlite:///{root}/runs/m.db"
    assert resolve_tracking_uri("m.db") == f"sqlite:///{root}/m.db"
    assert resolve_tracking_uri("mlruns") == (root / "mlruns").as_uri()
    assert resolve_tracking_uri("https://user:pw@host") == "https://user:pw@host"


def test_redact_strips_user_and_password():
    assert redact_uri("https://alice:s3cret@mlflow.example.com:8443/x") == "https://***@mlflow.example.com:8443/x"
    assert redact_uri("postgresql://bob:pw@db/mlflow") == "postgresql://***@db/mlflow"
    assert redact_uri("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"


def test_a_server_that_does_not_answer_is_a_one_line_input_error():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again below: nothing listens there
    with pytest.raises(InputError) as error:
        check_tracking_uri(f"http://alice:s3cret@127.0.0.1:{port}", timeout_s=2)
    message = str(error.value)
    assert "\n" not in message and "does not answer" in message
    assert "s3cret" not in message and "alice" not in message


def test_any_http_answer_counts_as_reachable():
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)  # answers 501
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        check_tracking_uri(f"http://127.0.0.1:{server.server_address[1]}", timeout_s=5)
    finally:
        server.shutdown()
        server.server_close()


def test_a_run_carries_the_documented_tags_params_metrics_and_artifacts(logged):
    client, result, _ = logged
    content = run_content(client, result.run_id)
    assert content["status"] == "FINISHED"
    assert content["tags"] == {
        "mixbench.kind": "train", "dataset": "ETTh1", "model": "dlinear", "pred_len": "24", "seq_len": "48",
        "protocol": "tslib-M-L48", "seed": "3",
        "config_hash": config_hash("dlinear", result.model_config, result.train_config),
    }
    params = content["params"]
    assert {f"model.{key}" for key in result.model_config} <= set(params)
    assert {f"train.{key}" for key in result.train_config} <= set(params)
    assert params["train.epochs"] == "2" and params["train.limit_eval_batches"] == "1"
    assert {key: params[f"data.{key}"] for key in ("dataset", "features", "target", "seq_len", "pred_len")} == {
        "dataset": "ETTh1", "features": "M", "target": "OT", "seq_len": "48", "pred_len": "24"}
    assert len(params["data.sha256"]) == 64
    assert params["seed"] == "3" and params["code_version"]
    for name in ("train_loss", "val_loss", "val_mse", "val_mae", "lr", "epoch_seconds", "samples_per_s"):
        assert [step for step, _ in content["metrics"][name]] == [1, 2]
        assert [value for _, value in content["metrics"][name]] == pytest.approx(
            [row[name] for row in result.history])
    assert content["metrics"]["test_mse"] == [(0, pytest.approx(result.test_mse))]
    assert content["metrics"]["best_epoch"] == [(0, result.best_epoch)]
    assert content["metrics"]["epochs_run"] == [(0, 2)]
    assert content["artifacts"] == ["config.yaml", "model/weights.safetensors", "plots/forecast.png"]


def test_logging_after_the_fact_gives_the_same_content_as_live_logging(logged):
    client, result, again = logged
    assert again != result.run_id
    assert run_content(client, again) == run_content(client, result.run_id)


def test_config_hash_ignores_the_seed_and_follows_the_config(logged):
    _, result, _ = logged
    same = config_hash("dlinear", result.model_config, result.train_config)
    assert same == config_hash("dlinear", dict(result.model_config), dict(result.train_config))
    assert same != config_hash("dlinear", result.model_config, {**result.train_config, "learning_rate": 1.0})
    assert len(same) == 12


def test_trial_runs_nest_under_their_parent_and_caller_tags_win(logged):
    client, result, _ = logged
    tracking = TrackingConfig(uri=client.tracking_uri, experiment="tests", parent_run_id=result.run_id, kind="trial",
                              tags={"protocol": "tslib-M-Lsearched"})
    child = client.get_run(log_experiment(result, tracking))
    assert child.data.tags["mlflow.parentRunId"] == result.run_id
    assert child.data.tags["mixbench.kind"] == "trial"
    assert child.data.tags["protocol"] == "tslib-M-Lsearched"


def test_a_run_that_raises_is_marked_failed(shared_data_dir, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"

    def abort(report):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        run_experiment(tiny_spec(shared_data_dir), on_epoch=abort, artifact_dir=tmp_path / "a",
                       tracking=TrackingConfig(uri=uri, experiment="failing"))
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("failing").experiment_id])
    assert run.info.status == "FAILED"
    assert "test_mse" not in run.data.metrics
    assert [metric.step for metric in client.get_metric_history(run.info.run_id, "val_loss")] == [1]


def test_an_unknown_run_kind_is_an_input_error(logged):
    client, result, _ = logged
    with pytest.raises(InputError, match="kind 'final'"):
        log_experiment(result, TrackingConfig(uri=client.tracking_uri, kind="final"))
