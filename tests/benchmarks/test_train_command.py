"""`mixbench train` and `mixbench ui` through the real CLI: a tiny MixMamba run on ETTh1 logged to a SQLite store,
its weights reproducing the logged test metrics, one-line errors with exit code 2, and the UI serving the store."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from safetensors.torch import load_model

import cli
from benchmarks.data.files import resolve_dataset
from benchmarks.data.protocol import DataProtocol, load_forecast_data
from benchmarks.models.registry import PROTOCOL_FIELDS, build_model
from benchmarks.training.evaluation import evaluate

pytestmark = pytest.mark.slow  # `mixbench train` subprocesses and a live MLflow UI

REPO_ROOT = Path(__file__).resolve().parents[2]
COMMANDS = {
    "train": ("benchmarks.training.command:train", "Train and test one model on one dataset, tracked in MLflow.",
              "mixbench train --model mixmamba --dataset ETTh1 --pred-len 96"),
    "ui": ("benchmarks.training.command:ui", "Open the MLflow UI on the tracking store.", "mixbench ui --port 5000"),
}
TINY_RUN = ["train", "--model", "mixmamba", "--dataset", "ETTh1", "--pred-len", "24", "--seq-len", "48", "--epochs",
            "1", "--seed", "5", "--set", "model.d_model=8", "--set", "model.d_state=8", "--set", "train.batch_size=4",
            "--set", "train.learning_rate=1e-3", "--device", "cpu", "--experiment", "cli",
            "--limit-train-batches", "2", "--limit-eval-batches", "2"]


def mixbench(args: list[str]) -> int:
    """Run the real CLI entry point with the train/ui commands registered; its exit code."""
    previous = dict(cli.COMMANDS)
    cli.COMMANDS.update({name: COMMANDS[name] for name in COMMANDS if name not in cli.COMMANDS})
    try:
        cli.main(args)
    except SystemExit as done:
        return int(done.code or 0)
    finally:
        cli.COMMANDS.clear()
        cli.COMMANDS.update(previous)
    return 0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def trained(shared_data_dir, tmp_path_factory):
    """One `mixbench train` run into a fresh SQLite store: (store uri, run id, stdout)."""
    store = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{store}/mlflow.db"
    capture = subprocess.run(
        [sys.executable, "-c", "import sys, cli; cli.COMMANDS.update(" + repr(COMMANDS) + "); cli.main(sys.argv[1:])",
         *TINY_RUN, "--tracking-uri", uri, "--data-dir", str(shared_data_dir)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert capture.returncode == 0, capture.stderr[-2000:]
    (experiment,) = [item for item in MlflowClient(uri).search_experiments() if item.name == "cli"]
    (run,) = MlflowClient(uri).search_runs([experiment.experiment_id])
    return uri, run.info.run_id, capture.stdout, capture.stderr


def test_train_prints_a_summary_with_the_run_and_how_to_open_it(trained):
    uri, run_id, stdout, stderr = trained
    (line,) = stdout.strip().splitlines()
    assert "test MSE" in line and "MAE" in line and run_id in line
    assert f"mixbench ui --tracking-uri {uri}" in line
    assert "epoch 1/1" in stderr and "samples_s" in stderr  # the progress bar


def test_train_logs_a_complete_run_whose_weights_reproduce_its_test_metrics(trained, shared_data_dir, tmp_path):
    uri, run_id, _, _ = trained
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["mixbench.kind"] == "train" and run.data.tags["model"] == "mixmamba"
    assert run.data.params["model.d_model"] == "8" and run.data.params["train.learning_rate"] == "0.001"
    assert run.data.params["train.batch_size"] == "4" and run.data.params["seed"] == "5"
    assert {"test_mse", "test_mae", "best_val_loss", "best_epoch", "epochs_run", "val_loss"} <= set(run.data.metrics)

    local = Path(client.download_artifacts(run_id, "", str(tmp_path)))
    assert (local / "plots" / "experts.png").is_file() and (local / "plots" / "forecast.png").is_file()
    config = yaml.safe_load((local / "config.yaml").read_text())["model_config"]
    overrides = {key: value for key, value in config.items() if key not in PROTOCOL_FIELDS}
    model, _ = build_model("mixmamba", config["seq_len"], config["pred_len"], config["enc_in"], overrides)
    load_model(model, local / "model" / "weights.safetensors")
    data = load_forecast_data(resolve_dataset("ETTh1", shared_data_dir), DataProtocol(seq_len=48, pred_len=24))
    score = evaluate(model, data.test, features="M", batch_size=4, limit=2, seed=5)
    assert score.mse == pytest.approx(run.data.metrics["test_mse"], rel=1e-12)
    assert score.mae == pytest.approx(run.data.metrics["test_mae"], rel=1e-12)


@pytest.mark.parametrize(("extra", "message"), [
    (["--set", "model.d_modle=8"], "--set model.d_modle is not a mixmamba setting: did you mean 'model.d_model'?"),
    (["--set", "model.d_model=wide"], "--set model.d_model='wide' must be an integer"),
    (["--set", "train.learning_rate=fast"], "--set train.learning_rate='fast' is invalid"),
    (["--set", "train.warmup=3"], "--set train.warmup is not a mixmamba setting"),
    (["--set", "learning_rate=1e-3"], "name the section, model.learning_rate or train.learning_rate"),
    (["--set", "model.d_model"], "is not key=value"),
    (["--model", "mamba3"], "--model 'mamba3' is not an installed model"),
])
def test_bad_input_is_one_line_and_exit_code_2(extra, message, capsys, tmp_path):
    code = mixbench([*TINY_RUN, "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1
    assert message in err
    assert not (tmp_path / "mlflow.db").exists()  # nothing was started


def test_an_unreachable_tracking_server_fails_before_training(capsys):
    code = mixbench([*TINY_RUN, "--tracking-uri", f"http://127.0.0.1:{free_port()}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "does not answer" in err and "`mlflow server --backend-store-uri sqlite:///mlflow.db --port" in err


def test_running_out_of_gpu_memory_is_one_line_with_the_fix_and_a_failed_run(out_of_gpu_memory, shared_data_dir,
                                                                             capsys, tmp_path):
    out_of_gpu_memory(after=0)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    MlflowClient(uri).search_experiments()  # creates the store first: MLflow logs two INFO lines when it does
    capsys.readouterr()
    code = mixbench(["train", "--model", "dlinear", "--dataset", "ETTh1", "--pred-len", "24", "--seq-len", "48",
                     "--epochs", "2", "--set", "train.batch_size=16", "--device", "cpu", "--experiment", "cli",
                     "--limit-train-batches", "2", "--limit-eval-batches", "2", "--tracking-uri", uri,
                     "--data-dir", str(shared_data_dir)])
    err = capsys.readouterr().err
    assert code == 2
    assert err == (
        "error: dlinear on ETTh1 (pred_len 24) ran out of GPU memory in epoch 1 (training) at batch size 16; lower "
        "--set train.batch_size (e.g. --set train.batch_size=8) or give the run a larger GPU share\n"
    )
    (experiment,) = [item for item in MlflowClient(uri).search_experiments() if item.name == "cli"]
    (run,) = MlflowClient(uri).search_runs([experiment.experiment_id])
    assert run.info.status == "FAILED" and "test_mse" not in run.data.metrics


def test_train_help_documents_the_set_scheme_with_an_example(capsys):
    assert mixbench(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "Examples:" in out and "train.learning_rate=1e-3" in out and "model.d_model=128" in out
    assert "--no-verify" in out


def test_ui_refuses_a_missing_store_and_a_remote_server(capsys, tmp_path):
    assert mixbench(["ui", "--tracking-uri", f"sqlite:///{tmp_path}/none.db"]) == 2
    assert "no MLflow store at" in capsys.readouterr().err
    assert mixbench(["ui", "--tracking-uri", "https://u:secret@mlflow.example.com"]) == 2
    err = capsys.readouterr().err
    assert "already a tracking server" in err and "secret" not in err


def test_ui_serves_the_store_and_its_artifacts_on_localhost(trained):
    uri, run_id, _, _ = trained
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", "import sys, cli; cli.COMMANDS.update(" + repr(COMMANDS) + "); cli.main(sys.argv[1:])",
         "ui", "--tracking-uri", uri, "--port", str(port)],
        cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as answer:
                    assert answer.status == 200
                    break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                assert time.monotonic() < deadline, "the MLflow UI did not answer within 300 s"
                time.sleep(1)
        with urllib.request.urlopen(f"{base}/api/2.0/mlflow/artifacts/list?run_id={run_id}", timeout=30) as answer:
            listed = {item["path"] for item in json.load(answer)["files"]}
        assert listed == {"config.yaml", "model", "plots"}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def test_a_capped_test_is_marked_on_the_console_and_in_the_run(trained):
    uri, run_id, stdout, _ = trained
    assert "(CAPPED TEST: 8 of " in stdout  # --limit-eval-batches 2 at batch size 4
    run = MlflowClient(tracking_uri=uri).get_run(run_id)
    assert run.data.tags["test_complete"] == "false" and run.data.tags["test_windows"].startswith("8/")


def test_a_modified_dataset_names_no_verify_and_no_verify_trains_on_it(capsys, tmp_path, shared_data_dir):
    modified = tmp_path / "data"
    (modified / "ETT-small").mkdir(parents=True)
    text = (shared_data_dir / "ETT-small" / "ETTh1.csv").read_text()
    (modified / "ETT-small" / "ETTh1.csv").write_text(text.replace(",", ", ", 1))
    run = [*TINY_RUN, "--data-dir", str(modified), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]
    assert mixbench(run) == 2
    err = capsys.readouterr().err
    assert "turn --verify off" in err and "--no-verify" in mixbench_help("train")  # the fix exists on this command
    assert mixbench([*run, "--no-verify"]) == 0


def mixbench_help(command: str) -> str:
    from click.testing import CliRunner

    from benchmarks.training.command import train, ui
    return CliRunner().invoke({"train": train, "ui": ui}[command], ["--help"]).output


def test_progress_warns_once_about_a_slow_cpu_run_and_shows_the_run_eta(shared_data_dir, capsys):
    from benchmarks.data.files import resolve_dataset as resolve
    from benchmarks.experiment import resolve_experiment
    from benchmarks.training.command import ProgressBars
    from benchmarks.training.engine import run_experiment

    experiment = resolve_experiment("dlinear", resolve("ETTh1", shared_data_dir), pred_len=24,
                                    seq_len=48, settings={"train.epochs": 2, "train.limit_train_batches": 5,
                                                          "train.limit_eval_batches": 1}, device="cpu")
    run_experiment(experiment, callbacks=[ProgressBars(2, on_cpu=True, warn_above_s=0)])
    err = capsys.readouterr().err
    assert err.count("warning: on the CPU this run will take about") == 1
    assert "epoch 2/2 (run ETA" in err
