"""`mixbench ui` in a real headless Chromium: the printed URL opens the experiment's runs page, which lists the run by
name (not MLflow 3's GenAI overview), and the run carries its dataset input, true times and model-training kind."""
from __future__ import annotations

import io
import re
import shutil
import socket
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from mlflow import MlflowClient

import cli

CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(name)), None)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--virtual-time-budget=15000"]
RUN_NAME = "browser-check-dlinear"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read()
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"mixbench ui did not listen on {port}")


@pytest.fixture(scope="module")
def trained_store(tmp_path_factory, shared_data_dir):
    root = tmp_path_factory.mktemp("ui")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            cli.main(["train", "--model", "dlinear", "--dataset", "ETTh1", "--epochs", "1", "--limit-train-batches",
                      "2", "--device", "cpu", "--tracking-uri", uri, "--data-dir", str(shared_data_dir)])
        except SystemExit as done:
            assert not done.code, err.getvalue()
    client = MlflowClient(tracking_uri=uri)
    run = client.search_runs([client.get_experiment_by_name("mixbench").experiment_id])[0]
    client.set_tag(run.info.run_id, "mlflow.runName", RUN_NAME)
    return root, uri, client, run


@pytest.mark.slow
def test_runs_carry_kind_dataset_input_and_true_times(trained_store):
    _, _, client, run = trained_store
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    (dataset_input,) = run.inputs.dataset_inputs
    dataset = dataset_input.dataset
    assert dataset.name == "ETTh1" and dataset.digest == run.data.params["data.sha256"][:36]
    assert dataset.source.endswith('ETTh1.csv"}') and '"test_windows": 2785' in dataset.profile
    assert {tag.key: tag.value for tag in dataset_input.tags}["sha256"] == run.data.params["data.sha256"]
    assert run.data.tags["test_complete"] == "true" and run.data.tags["test_windows"] == "2785/2785"
    assert run.info.end_time - run.info.start_time > 100  # a real training run, not the milliseconds of logging


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary installed (CI installs one with apt-get)")
def test_ui_url_opens_the_runs_page_with_the_run(trained_store, tmp_path):
    root, uri, _, run = trained_store
    port = free_port()
    mixbench = Path(sys.executable).with_name("mixbench")
    ui = subprocess.Popen([str(mixbench), "ui", "--tracking-uri", uri, "--port", str(port)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        announced = ui.stderr.readline()
        match = re.search(r"http://127\.0\.0\.1:\d+/#/experiments/(\d+)/runs", announced)
        assert match and match.group(1) == run.info.experiment_id, announced
        wait_for_port(port, ui)
        profile = ["--user-data-dir=" + str(tmp_path / "profile")]
        dom = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, *profile, "--dump-dom", match.group(0)],
                             capture_output=True, text=True, timeout=120).stdout
        assert RUN_NAME in dom, dom[-2000:]
        shot = tmp_path / "runs.png"
        subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, *profile, "--window-size=1400,900", f"--screenshot={shot}",
                        match.group(0)], capture_output=True, text=True, timeout=120)
        assert shot.stat().st_size > 10_000
        shutil.copy(shot, root / "runs.png")  # kept beside the store for a person to look at
    finally:
        ui.terminate()
        ui.wait(timeout=30)
