"""A real local Ray cluster (a head and a second node, token authentication on) and a real MLflow tracking server.

Each starts in a session of its own; the members of that process group are recorded (pid and start time) once it
is up, and teardown signals exactly those and what they started, read from /proc; never `ray stop` or a name.
"""
from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
START_TIMEOUT_S = 300
NODE_ATTEMPTS = 3


@dataclass(frozen=True)
class LocalCluster:
    """A running two-node Ray cluster: its dashboard URL, its token file, a storage path both nodes reach."""

    address: str
    token_file: Path
    storage_path: Path


@dataclass(frozen=True)
class TrackingServer:
    """A running `mlflow server` (via cluster/mlflow-server.sh): its URL and the directory its artifacts land in."""

    uri: str
    artifacts: Path


class MixbenchCLI:
    """Runs `python -m cli ...` from the repository root as a user would, with a clean environment and HOME."""

    def __init__(self, home: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_", "MIXBENCH_STORAGE"))}
        # A private HOME: no ~/.ray/auth_token of this machine's user stands in for the token a test passes.
        self.env = {**env, "HOME": str(home)}

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "cli", *args], cwd=REPO_ROOT, env=self.env, capture_output=True, text=True,
            timeout=timeout,
        )

    def start(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "cli", *args], cwd=REPO_ROOT, env=self.env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )


@pytest.fixture(scope="module")
def mixbench():
    with tempfile.TemporaryDirectory(prefix="mixbench-home-") as home:
        yield MixbenchCLI(Path(home))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _process_table() -> tuple[dict[int, list[int]], dict[int, list[int]]]:
    """(children by parent pid, members by process group id) of every process, from /proc."""
    children, groups = defaultdict(list), defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children[int(fields[1])].append(int(entry.name))
            groups[int(fields[2])].append(int(entry.name))
    return children, groups


def snapshot_group(group: int) -> dict[int, str]:
    """The members of process group `group` now, with their start times: the roots `stop_processes` may signal."""
    _, groups = _process_table()
    return {pid: started for pid in groups[group] if (started := _start_time(pid)) is not None}


def stop_processes(snapshots: list[dict[int, str]]) -> None:
    """SIGTERM the snapshotted processes still running and everything they started (Ray's workers and the jobs'
    drivers start sessions of their own), SIGKILL what is left after 15 s; fails if anything survives.

    A pid is signalled only while it has the start time recorded for it, so a recycled pid is never hit.
    """
    children, _ = _process_table()
    roots = [pid for snapshot in snapshots for pid, started in snapshot.items() if _start_time(pid) == started]
    for pid in roots:
        roots.extend(child for child in children[pid] if child not in roots)
    started = {pid: _start_time(pid) for pid in roots}

    def running(pid: int) -> bool:
        return started[pid] is not None and _start_time(pid) == started[pid]

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in started:
            if running(pid):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(running(pid) for pid in started):
            time.sleep(0.2)
    survivors = [pid for pid in started if running(pid)]
    assert not survivors, f"processes still running after teardown: {survivors}"


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot), or None if it is gone or a zombie."""
    try:
        fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]


def _wait_until(ready, still_starting=lambda: True) -> bool:
    """Polls `ready()` until it holds (True), or `still_starting()` fails or START_TIMEOUT_S passes (False)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and still_starting():
        if ready():
            return True
        time.sleep(1)
    return False


def _start_node(args: list[str], env: dict[str, str], log_dir: Path, name: str) -> dict[int, str]:
    """`ray start ARGS`, which returns once the node has registered; returns the node's daemons (`snapshot_group`).

    Up to NODE_ATTEMPTS tries: `ray start` gives a node a fixed 30 s to register and its raylet a fixed wait for
    the dashboard agent's ports; on a busy machine the agent's imports can miss that, and a second try finds them
    in the page cache.
    """
    for attempt in range(1, NODE_ATTEMPTS + 1):
        log = log_dir / f"{name}.{attempt}.log"
        # Explicit ports: the defaults (e.g. the agent's 52365) would clash between two nodes on one host.
        ports = [
            "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
            "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port()),
            "--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),
        ]
        # Its own session: the node's daemons keep its process group after `ray start` returns.
        starter = subprocess.Popen(
            [str(BIN / "ray"), "start", "--num-cpus", "1", "--disable-usage-stats", *ports, *args],
            env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            if starter.wait(timeout=START_TIMEOUT_S) == 0:
                return snapshot_group(starter.pid)
        except subprocess.TimeoutExpired:
            pass
        stop_processes([snapshot_group(starter.pid)])
        starter.wait()
    pytest.fail(f"{name} did not come up in {NODE_ATTEMPTS} attempts:\n{log.read_text()[-3000:]}")


@dataclass(frozen=True)
class Services:
    cluster: LocalCluster
    tracking: TrackingServer


def _start_tracking_server(root: Path) -> tuple[subprocess.Popen, TrackingServer, Path]:
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{root / 'mlflow.db'}",
        "MLFLOW_ARTIFACTS_DESTINATION": str(root / "artifacts"),
        "MLFLOW_HOST": "127.0.0.1",
        "MLFLOW_PORT": str(port),
        "MLFLOW_WORKERS": "1",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    log = root / "server.log"
    server = subprocess.Popen(
        ["bash", str(REPO_ROOT / "cluster" / "mlflow-server.sh")],
        env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    return server, TrackingServer(f"http://127.0.0.1:{port}", root / "artifacts"), log


@pytest.fixture(scope="module")
def services():
    """A head and a second node on this machine (Ray accepts several nodes per host) with token auth on, and
    `mlflow server` started by cluster/mlflow-server.sh (sqlite backend, served artifacts), started at once.

    Their files live in a private temp dir, not pytest's tmp_path: pytest keeps only the newest three base temp
    dirs per user, so a concurrent pytest run would delete the Ray session (and the job's code) under the cluster.
    """
    with tempfile.TemporaryDirectory(prefix="mixbench-cluster-") as scratch:
        yield from _run_services(Path(scratch))


def _run_services(root: Path):
    token_file = root / "auth_token"
    token_file.write_text(secrets.token_hex(32))
    token_file.chmod(0o600)
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token_file),
        # The jobs' entrypoint runs `python`: this interpreter, whose environment holds the project's requirements.
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("RAY_ADDRESS", None)
    gcs_port, dashboard_port = free_port(), free_port()
    address = f"http://127.0.0.1:{dashboard_port}"
    headers = {"Authorization": f"Bearer {token_file.read_text()}"}
    head_args = [
        "--head", "--node-ip-address", "127.0.0.1", "--port", str(gcs_port), "--dashboard-host", "127.0.0.1",
        "--dashboard-port", str(dashboard_port), "--ray-client-server-port", str(free_port()),
        "--temp-dir", str(root / "head"),
    ]
    # Each node its own temp dir, as on separate machines: in a shared one, the second node's runtime-env agent
    # re-extracts the job's code over the directory the driver runs in.
    worker_args = [
        "--address", f"127.0.0.1:{gcs_port}", "--node-ip-address", "127.0.0.1", "--temp-dir", str(root / "worker"),
    ]

    def alive_nodes() -> int:
        try:
            reply = requests.get(f"{address}/api/v0/nodes", headers=headers, timeout=5)
        except requests.RequestException:
            return 0
        if reply.status_code != 200:
            return 0
        return sum(node["state"] == "ALIVE" for node in reply.json()["data"]["result"]["result"])

    (root / "mlflow").mkdir()
    server, tracking, server_log = _start_tracking_server(root / "mlflow")

    def tracking_healthy() -> bool:
        try:
            return requests.get(f"{tracking.uri}/health", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    started = [snapshot_group(server.pid)]
    try:
        started.append(_start_node(head_args, env, root, "head"))
        if not _wait_until(lambda: alive_nodes() == 1):
            pytest.fail(f"the Ray head's dashboard did not answer at {address}")
        started.append(_start_node(worker_args, env, root, "worker"))
        if not _wait_until(lambda: alive_nodes() == 2):
            pytest.fail("the second Ray node did not join the head")
        if not _wait_until(tracking_healthy, lambda: server.poll() is None):
            pytest.fail(f"the MLflow server did not come up:\n{server_log.read_text()[-3000:]}")
        yield Services(LocalCluster(address, token_file, root / "ray_results"), tracking)
    finally:
        stop_processes(started[::-1])
        server.wait()


@pytest.fixture(scope="module")
def ray_cluster(services: Services) -> LocalCluster:
    return services.cluster


@pytest.fixture(scope="module")
def tracking_server(services: Services) -> TrackingServer:
    return services.tracking
