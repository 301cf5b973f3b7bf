"""The Ray runtime a search or benchmark runs on: a fresh local one, or an existing cluster at an address, checked
up front so a wrong address fails in seconds with one line instead of Ray's minutes of retries.
"""
from __future__ import annotations

import logging
import os
import re
import socket
from pathlib import Path

import ray

from benchmarks.errors import ClusterError

REPO_ROOT = Path(__file__).resolve().parents[1]
_ADDRESS = re.compile(r"^(?:(?P<scheme>ray)://)?(?P<host>[A-Za-z0-9_.\-]+|\[[0-9A-Fa-f:]+\]):(?P<port>\d{1,5})$")
PROBE_TIMEOUT_S = 3.0
# Ray gives a new local raylet a fixed 30 s to register; on a busy laptop a second try usually makes it.
LOCAL_START_ATTEMPTS = 2


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

    A local runtime gets no dashboard and the repository on PYTHONPATH, so trials import the search code even when
    it runs from a checkout rather than an installed package. Ray's token authentication needs nothing here: a local
    ray.init creates and uses its own token; a remote cluster with tokens needs RAY_AUTH_TOKEN set by the user.
    """
    if ray.is_initialized():
        return False
    if address is not None:
        check_address(address)
    else:
        paths = [str(REPO_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    for attempt in range(1 if address is not None else LOCAL_START_ATTEMPTS):
        try:
            ray.init(address=address, include_dashboard=False if address is None else None,
                     logging_level=logging.WARNING, log_to_driver=False)
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


def cluster_resources() -> tuple[float, float]:
    """(CPUs, GPUs) of the connected cluster."""
    resources = ray.cluster_resources()
    return float(resources.get("CPU", 0.0)), float(resources.get("GPU", 0.0))
