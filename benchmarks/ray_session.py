"""The Ray runtime a search or benchmark runs on: a fresh local one, or an existing cluster at an address, checked
up front so a wrong address fails in seconds with one line instead of Ray's minutes of retries.
"""
from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import ray
from ray._private import ray_constants

from benchmarks.errors import ClusterError

REPO_ROOT = Path(__file__).resolve().parents[1]
_ADDRESS = re.compile(r"^(?:(?P<scheme>ray)://)?(?P<host>[A-Za-z0-9_.\-]+|\[[0-9A-Fa-f:]+\]):(?P<port>\d{1,5})$")
PROBE_TIMEOUT_S = 3.0
# Ray gives a new local raylet a fixed 30 s to register; on a busy laptop a second try usually makes it.
LOCAL_START_ATTEMPTS = 2
# Ray binds a node's servers to all interfaces unless it treats the machine as a one-node, loopback-only "cluster"
# (its Windows/macOS default). A local runtime is that: every Ray process (GCS, raylet, workers, agents, the metrics
# port) then listens on 127.0.0.1 only. Read by Ray at import and in every process it starts, hence env and constant.
LOOPBACK_ONLY_ENV = {ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR: "0"}
# Ray turns token authentication on for a new local runtime (other users of the machine cannot use its loopback
# ports without ~/.ray/auth_token) and warns "Token authentication is enabled" on every run; the protection stays,
# the warning goes (docs/reliability.md says what it meant).
AUTH_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"


def check_address(address: str) -> None:
    """Raise ClusterError unless `address` is `auto` or host:port / ray://host:port with something listening there."""
    if address == "auto":
        return
    match = _ADDRESS.match(address)
    if match is None or not 0 < int(match["port"]) < 65536:
        raise ClusterError(f"{{setting}} {address!r} is not a Ray address; use host:port (e.g. 10.0.0.5:6379), "
                           "ray://host:10001, auto, or leave it out to start Ray locally", setting="address")
    host = match["host"].strip("[]")
    try:
        with socket.create_connection((host, int(match["port"])), timeout=PROBE_TIMEOUT_S):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ClusterError(f"{{setting}} {address}: nothing answers there ({reason}); start the cluster "
                           "(`ray start --head`) or leave {setting} out to start Ray locally",
                           setting="address") from None


def connect(address: str | None) -> bool:
    """Make sure Ray is initialised; True when this call started it (so the caller shuts it down at the end).

    A local runtime gets no dashboard, listens on 127.0.0.1 only (LOOPBACK_ONLY_ENV), keeps Ray's token
    authentication without its warning (AUTH_NOTICE_LOGGER), is ended by a reaper if the driver is killed, and has
    the repository on PYTHONPATH, so trials import the search code even when it runs from a checkout.
    A remote cluster with tokens needs RAY_AUTH_TOKEN set by the user.
    """
    if ray.is_initialized():
        return False
    if address is not None:
        check_address(address)
    else:
        paths = [str(REPO_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        logging.getLogger(AUTH_NOTICE_LOGGER).setLevel(logging.ERROR)
    for attempt in range(1 if address is not None else LOCAL_START_ATTEMPTS):
        try:
            if address is None:
                _init_loopback_only()
            else:
                ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
            return True
        except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as error:
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            where = f"{{setting}} {address}" if address else "a local Ray runtime"
            raise ClusterError(f"could not start or reach {where}: {first}; check the address and RAY_AUTH_TOKEN, "
                               "or leave {setting} out", setting="address") from None
        except Exception as error:  # noqa: BLE001 - Ray raises a bare Exception when its raylet starts too slowly
            if "timed out during startup" not in str(error):
                raise
            ray.shutdown()
    raise ClusterError(f"Ray's local runtime did not start in time ({LOCAL_START_ATTEMPTS} tries of Ray's fixed 30 s; "
                       "is the machine overloaded?); retry, or run `ray start --head` and pass {setting} auto",
                       setting="address")


def _init_loopback_only() -> None:
    """Start a local runtime bound to 127.0.0.1, and its reaper. The loopback setting holds only while Ray starts
    its processes (they keep it), so a later runtime of this process (a cluster, in tests) is not affected."""
    saved_env = {name: os.environ.get(name) for name in LOOPBACK_ONLY_ENV}
    saved_constant = ray_constants.ENABLE_RAY_CLUSTER
    os.environ.update(LOOPBACK_ONLY_ENV)
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_constant
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    _start_reaper()


def _start_reaper() -> None:
    """Watch this local runtime from a separate process that ends it when the driver dies.

    A driver killed with SIGKILL cannot shut Ray down; its GCS and raylet follow it, but Ray's agents (dashboard,
    runtime-env, metrics) keep their ports open for about a minute before noticing. The reaper ends them within
    REAP_INTERVAL_S of the driver's death, and exits by itself when the runtime shuts down normally.
    """
    node = ray._private.worker._global_node
    roots = [str(info.process.pid) for name in ("raylet", "gcs_server")
             for info in node.all_processes.get(name, []) if info.process is not None]
    reaper = subprocess.Popen([sys.executable, "-m", "benchmarks.ray_reaper", str(os.getpid()), *roots],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              start_new_session=True, cwd=REPO_ROOT)
    # Its first record of the runtime's processes is taken before this returns: a driver killed right after
    # start-up still has its agents reaped.
    reaper.stdout.readline()
    reaper.stdout.close()


def cluster_resources() -> tuple[float, float]:
    """(CPUs, GPUs) of the connected cluster."""
    resources = ray.cluster_resources()
    return float(resources.get("CPU", 0.0)), float(resources.get("GPU", 0.0))
