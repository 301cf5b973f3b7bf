"""The reaper of a local Ray runtime: a small process (no Ray import, so it starts at once) that ends the runtime's
processes when the driver that started it dies, even by SIGKILL. Started by benchmarks.ray_session.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

REAP_INTERVAL_S = 0.5


def _started(pid: int) -> str | None:
    """The start time of process `pid` (tells a process from a later one with its pid), None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else fields[19]


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    return children


def reap(driver: int, roots: list[int]) -> None:
    """Record the processes under `roots` (raylet, GCS) while `driver` lives; once it or they are gone, SIGKILL every
    recorded process still alive (the same process: its start time is checked)."""
    known = {pid: _started(pid) for pid in roots}
    announced = False
    while os.getppid() == driver and any(_started(pid) == known[pid] for pid in roots):
        tree, pending = _children(), list(roots)
        while pending:
            pid = pending.pop()
            known.setdefault(pid, _started(pid))
            pending += tree.get(pid, [])
        if not announced:
            print("watching", flush=True)
            announced = True
        time.sleep(REAP_INTERVAL_S)
    for pid, started in known.items():
        if started is not None and _started(pid) == started:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


if __name__ == "__main__":
    reap(int(sys.argv[1]), [int(pid) for pid in sys.argv[2:]])
