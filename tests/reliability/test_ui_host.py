"""`mixbench ui` binds loopback unless told otherwise: any other --host needs --allow-remote and prints one warning
line naming the risk (the MLflow UI has no login)."""
from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

MIXBENCH = Path(sys.executable).with_name("mixbench")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).search_experiments()  # creates the store's tables
    return uri


@pytest.mark.slow
@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "example.org"])
def test_a_non_loopback_host_without_allow_remote_is_refused(store, host):
    done = subprocess.run([str(MIXBENCH), "ui", "--tracking-uri", store, "--host", host, "--port", str(free_port())],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith("error: --host") and "--allow-remote" in done.stderr
    assert len(done.stderr.splitlines()) == 1


@pytest.mark.slow
def test_allow_remote_serves_with_one_warning_line(store):
    port = free_port()
    ui = subprocess.Popen([str(MIXBENCH), "ui", "--tracking-uri", store, "--host", "0.0.0.0", "--port", str(port),
                           "--allow-remote"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        warning, announced = ui.stderr.readline(), ui.stderr.readline()
        assert warning.startswith("warning: serving the MLflow UI on 0.0.0.0") and "without a login" in warning
        assert f"http://127.0.0.1:{port}" in announced
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        else:
            raise AssertionError("the UI did not start")
    finally:
        ui.terminate()
        ui.wait(timeout=30)
