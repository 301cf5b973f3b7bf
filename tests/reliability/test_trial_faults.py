"""Faults inside a search, injected for real on CPU (ETTh1, DLinear): a trial's worker process SIGKILLed mid-run is
retried from its last checkpoint (FailureConfig max_failures) and the search completes with every epoch logged once.

A diverging (NaN) trial and a killed driver are covered by tests/search/test_search.py (see docs/reliability.md).
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # kills Ray workers mid-epoch and waits for the resumed trial

SPACE = "model:\n  moving_avg: 25\ntrain:\n  learning_rate: {choices: [0.001, 0.002]}\n  batch_size: 16\n"
EPOCHS = 4


@pytest.fixture(scope="module")
def ray_runtime():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield
    ray.shutdown()


def trial_workers() -> list[int]:
    """Pids of this Ray session's workers running a Tune function trainable (titled `ray::ImplicitFunc...`).

    Only children of this session's raylet count, so Ray workers of other processes on the machine are never hit.
    """
    import ray

    raylet = ray._private.worker._global_node.all_processes["raylet"][0].process.pid
    found = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if command.startswith("ray::") and "ImplicitFunc" in command and parent == raylet:
            found.append(int(entry.name))
    return found


def kill_after_first_checkpoint(trial_root: Path, killed: list[int], timeout_s: float = 300) -> None:
    """Wait until the driver has registered a trial's epoch-1 checkpoint, then SIGKILL the worker that runs it (mid epoch 2)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        # result.json is written by the driver once it has registered the epoch-1 result and its checkpoint
        results = list(trial_root.glob("*/trial_*/result.json"))
        if results and results[0].read_text().strip():
            for pid in trial_workers():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            return
        time.sleep(0.05)


def test_a_trial_killed_mid_epoch_resumes_from_its_checkpoint(ray_runtime, shared_data_dir: Path,
                                                              tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from search.config import SearchConfig
    from search.runner import run_search

    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    storage = tmp_path / "ray"
    config = SearchConfig(dataset="ETTh1", model="dlinear", trials=1, epochs=EPOCHS, seed=3, space=str(space),
                          data_dir=str(shared_data_dir), limit_train_batches=150, limit_eval_batches=2,
                          scheduler="fifo", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                          storage_path=str(storage), max_failures=2)
    killed: list[int] = []
    killer = threading.Thread(target=kill_after_first_checkpoint, args=(storage, killed), daemon=True)
    killer.start()
    outcome = run_search(config)
    killer.join()
    assert killed, "no trial worker was found to kill"
    assert outcome.counts["finished"] == 1 and outcome.counts["failed"] == 0

    (trial_dir,) = outcome.experiment_dir.glob("trial_*")
    reported = [json.loads(line)["epoch"] for line in (trial_dir / "result.json").read_text().splitlines()]
    # Resumed, not restarted: epoch 1 was trained and reported once, and training went on to the last epoch.
    assert reported.count(1) == 1 and reported[-1] == EPOCHS and sorted(set(reported)) == list(range(1, EPOCHS + 1))
    from ray.tune import ExperimentAnalysis

    (trial,) = ExperimentAnalysis(str(outcome.experiment_dir)).trials
    assert trial.run_metadata.num_failures == 1

    client = MlflowClient(tracking_uri=config.tracking_uri)
    experiment = client.get_experiment_by_name("mixbench")
    (child,) = client.search_runs([experiment.experiment_id], filter_string="tags.`mixbench.kind` = 'trial'")
    assert child.info.status == "FINISHED" and child.data.tags["trial_state"] == "finished"
    steps = [metric.step for metric in client.get_metric_history(child.info.run_id, "val_loss")]
    assert sorted(steps) == list(range(1, EPOCHS + 1))
