"""`mixbench ui` binds loopback unless told otherwise: any other --host needs --allow-remote and prints one warning
line naming the risk (the MLflow UI has no login)."""
from __future__ import annotations

import http.client
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


def serve(store: str, port: int, *flags: str) -> subprocess.Popen:
    """`mixbench ui` on `port`, returned once it accepts connections."""
    ui = subprocess.Popen([str(MIXBENCH), "ui", "--tracking-uri", store, "--port", str(port), *flags],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return ui
        if ui.poll() is not None:
            raise AssertionError(f"the UI exited with {ui.returncode}")
        time.sleep(0.2)
    ui.terminate()
    raise AssertionError("the UI did not start")


def request(port: int, host: str, method: str = "GET", path: str = "/", body: str | None = None) -> tuple[int, str]:
    """One request to the UI on 127.0.0.1:`port` as a browser that reached it under the name `host` sends it
    (Host header, and the Origin header browsers add to a POST)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Host": f"{host}:{port}"}
        if method == "POST":
            headers |= {"Origin": f"http://{host}:{port}", "Content-Type": "application/json"}
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        connection.close()


SEARCH_RUNS = ("/ajax-api/2.0/mlflow/runs/search", '{"experiment_ids": ["0"], "max_results": 1}')


@pytest.mark.slow
def test_allow_remote_answers_a_browser_that_uses_a_host_name(store):
    """MLflow 3's server answers 403 'Invalid Host header' to any name but localhost and private IPs, and blocks a
    POST whose Origin is not localhost: with --allow-remote the UI is meant to be reached by name from elsewhere."""
    port = free_port()
    ui = serve(store, port, "--host", "0.0.0.0", "--allow-remote")
    try:
        for name in ("mixbench-ui.example.org", "gpu-box"):
            status, text = request(port, name)
            assert status == 200, text[:200]
            status, text = request(port, name, "POST", *SEARCH_RUNS)
            assert status == 200, text[:200]
    finally:
        ui.terminate()
        ui.wait(timeout=30)


@pytest.mark.slow
def test_loopback_ui_answers_only_this_machines_names(store):
    port = free_port()
    ui = serve(store, port)
    try:
        assert request(port, "localhost")[0] == 200
        assert request(port, "127.0.0.1", "POST", *SEARCH_RUNS)[0] == 200
        status, text = request(port, "mixbench-ui.example.org")
        assert status == 403 and "Invalid Host header" in text
    finally:
        ui.terminate()
        ui.wait(timeout=30)
