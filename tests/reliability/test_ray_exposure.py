"""Finding 8 of issue 20 (deliverable 7): the local Ray runtime a search or benchmark starts listens on 127.0.0.1
only (GCS, raylet, workers, agents, the metrics port), and a driver killed with SIGKILL leaves no listening process.

Sockets are read from /proc (the `ss -ltnp` view): every listening socket of the driver's process tree."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # starts a Ray runtime in a subprocess

REPO_ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}
DRIVER = ("import time; import ray; from benchmarks import ray_session; ray_session.connect(None); "
          "ray.get(ray.remote(lambda: 1).remote()); print('up', flush=True); time.sleep(600)")


def listening_sockets() -> dict[str, tuple[str, int]]:
    """inode -> (address, port) of every listening TCP socket on the machine."""
    found = {}
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            host, port = fields[1].split(":")
            raw = bytes.fromhex(host)
            if family == socket.AF_INET6:
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
            else:
                raw = raw[::-1]
            found[fields[9]] = (socket.inet_ntop(family, raw), int(port, 16))
    return found


def process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    tree, pending = [], [root]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending += children.get(pid, [])
    return tree


def started(pid: int) -> str | None:
    """Start time of `pid` (None once it is gone or a zombie): a busy machine reuses pids within seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else fields[19]


def survivors(tree: dict[int, str | None]) -> list[int]:
    return [pid for pid, start in tree.items() if start is not None and started(pid) == start]


def listening(pids: list[int]) -> list[tuple[int, str, int]]:
    sockets = listening_sockets()
    found = []
    for pid in pids:
        try:
            descriptors = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for descriptor in descriptors:
            try:
                target = os.readlink(descriptor)
            except OSError:
                continue
            inode = target[len("socket:["):-1] if target.startswith("socket:[") else None
            if inode in sockets:
                found.append((pid, *sockets[inode]))
    return found


def test_local_ray_listens_on_loopback_and_dies_with_its_driver(tmp_path: Path):
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HOME": str(tmp_path)}
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    driver = subprocess.Popen([sys.executable, "-c", DRIVER], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    try:
        assert driver.stdout.readline().strip() == "up"
        tree = {pid: started(pid) for pid in process_tree(driver.pid)}
        sockets = listening(list(tree))
        assert len(sockets) >= 4, sockets  # GCS, raylet, a worker, the agents: the check looked at something
        exposed = [entry for entry in sockets if entry[1] not in LOOPBACK]
        assert exposed == []
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    # Ray's own agents take about a minute to notice; MixBench's reaper ends them within a second or so.
    deadline = time.monotonic() + 10
    while listening(survivors(tree)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert listening(survivors(tree)) == []
