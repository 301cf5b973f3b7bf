"""Safety: services bind 127.0.0.1 unless asked otherwise, checkpoints and caches refuse crafted pickles, and
Ray token authentication stays on in every cluster config.
"""
from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.reliability.conftest import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


def listening(port: int) -> list[str]:
    """Local addresses (hex, as /proc/net/tcp{,6} write them) of the sockets LISTENing on `port`."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if fields[3] == "0A" and int(hex_port, 16) == port:
                found.append(address)
    return found


class Payload:
    """Unpickling this runs code: it creates the file `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.slow  # waits for a real MLflow UI server to start
def test_mixbench_ui_listens_on_loopback_only(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(tracking_uri=store).search_experiments()
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", "import cli; cli.main()", "ui", "--tracking-uri", store,
                                "--port", str(port)], cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not listening(port) and time.monotonic() < deadline:
            time.sleep(0.3)
        addresses = listening(port)
        assert addresses and set(addresses) == {"0100007F"}, addresses  # 127.0.0.1, nothing else
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_a_local_ray_runtime_starts_no_dashboard() -> None:
    script = ("from benchmarks.ray_session import connect; import ray; connect(None); "
              "print(ray.get_runtime_context().get_node_id()); ray.shutdown()")
    before = listening(8265)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "PYTHONPATH": str(REPO_ROOT),
                                              "RAY_USAGE_STATS_ENABLED": "0"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert listening(8265) == before == []


def test_a_crafted_pickle_in_a_trial_checkpoint_is_refused(tmp_path: Path) -> None:
    from search.trial import CHECKPOINT_FILE, load_checkpoint

    marker = tmp_path / "pwned"
    torch.save({"epoch": 1, "evil": Payload(marker)}, tmp_path / CHECKPOINT_FILE)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_checkpoint(tmp_path)
    assert not marker.exists()
    torch.save({"epoch": 1, "weights": torch.ones(2)}, tmp_path / CHECKPOINT_FILE)
    assert load_checkpoint(tmp_path)["epoch"] == 1  # a plain checkpoint still loads


def test_a_crafted_pickle_in_the_csv_cache_is_refused(tmp_path: Path) -> None:
    from benchmarks.data.csvcache import _read_entry

    marker = tmp_path / "pwned"
    entry = tmp_path / "entry.npz"
    with zipfile.ZipFile(entry, "w") as archive:
        for name in ("columns", "dates", "values"):
            with archive.open(f"{name}.npy", "w") as handle:
                np.lib.format.write_array(handle, np.array([Payload(marker)], dtype=object), allow_pickle=True)
    assert _read_entry(entry) is None  # treated as a damaged entry: the CSV is parsed again
    assert not marker.exists()


def test_saved_weights_are_safetensors_not_pickles() -> None:
    """The engine writes weights with safetensors (no code in the file); nothing in the platform unpickles them."""
    source = (REPO_ROOT / "benchmarks" / "training" / "artifacts.py").read_text()
    assert "weights.safetensors" in source and "save_model" in source
    for package in ("benchmarks", "search", "results", "cluster"):
        for path in (REPO_ROOT / package).rglob("*.py"):
            text = path.read_text()
            assert "pickle.load" not in text and "allow_pickle=True" not in text, path
            for line in text.splitlines():
                assert "torch.load(" not in line or "weights_only=True" in line, f"{path}: {line.strip()}"


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "cluster").glob("*.yaml")), ids=lambda path: path.name)
def test_cluster_configs_keep_ray_token_authentication_on(path: Path) -> None:
    documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    text = path.read_text()
    if "ray" not in text.lower() or path.name.startswith("mlflow"):
        pytest.skip(f"{path.name} starts no Ray cluster")
    assert "RAY_AUTH_MODE=token" in text or any(
        (doc.get("spec") or {}).get("rayClusterSpec", {}).get("authOptions", {}).get("mode") == "token"
        for doc in documents if isinstance(doc, dict)), f"{path.name} runs Ray without token authentication"
    assert "RAY_AUTH_MODE=disabled" not in text
