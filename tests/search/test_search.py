"""`mixbench search` end to end on CPU (ETTh1, pred 96, a tiny MixMamba space, 2 batches per epoch): MLflow gets one
parent and one child run per trial with their artifacts, a diverging trial is recorded as failed, the same seed
proposes the same configs, a killed search resumes without losing or repeating trials, and bad input exits 2.
"""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # Ray Tune searches in this process and in subprocesses

REPO_ROOT = Path(__file__).resolve().parents[2]

# Keep each Ray start light and offline.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_enable_metrics_collection", "0")

# The model is tiny and learning_rate 1e30 makes a trial diverge (NaN), so the search records a failed trial.
TINY_SPACE = """\
model:
  d_model: 8
  num_experts: {low: 2, high: 3}
  top_k: {low: 2, high: num_experts}
  patch_len: {choices: [16, 24]}
  stride: {low: 8, high: patch_len, step: 8}
train:
  learning_rate: {choices: [0.001, 0.01, 1.0e+30]}
  batch_size: 16
"""
SEED = 5
TRIALS = 4
# `mixbench` as installed: cli.main, with the search command registered as cli.COMMANDS will list it.
CLI = [sys.executable, "-c", "import cli; cli.COMMANDS.setdefault('search', ('search.command:search', 'Search.', "
       "'mixbench search --dataset weather')); cli.main()", "search"]


def search_args(space: Path, data_dir: Path, root: Path, *extra: str) -> list[str]:
    return ["--dataset", "ETTh1", "--model", "mixmamba", "--pred-len", "96", "--trials", str(TRIALS), "--epochs", "2",
            "--seed", str(SEED), "--space", str(space), "--data-dir", str(data_dir), "--limit-train-batches", "2",
            "--limit-eval-batches", "1", "--tracking-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--storage-path", str(root / "ray"), *extra]


def store(root: Path):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("mixbench")
    runs = [] if experiment is None else client.search_runs([experiment.experiment_id], max_results=100)
    return client, runs


def kind(runs, name: str):
    return [run for run in runs if run.data.tags.get("mixbench.kind") == name]


def proposed_in_order(experiment_dir: Path) -> list[dict]:
    """The configs Tune ran, in the order the searcher proposed them."""
    from ray.tune import ExperimentAnalysis

    from search.summary import trial_number

    trials = sorted(ExperimentAnalysis(str(experiment_dir)).trials, key=trial_number)
    return [trial.config for trial in trials]


@pytest.fixture(scope="module")
def ray_runtime():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def space_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("space") / "tiny.yaml"
    path.write_text(TINY_SPACE)
    return path


@pytest.fixture(scope="module")
def finished_search(ray_runtime, space_file: Path, shared_data_dir: Path, tmp_path_factory):
    """One search of 4 trials x 2 epochs run in this process on the shared Ray runtime."""
    from search.config import SearchConfig
    from search.runner import run_search

    root = tmp_path_factory.mktemp("search")
    config = SearchConfig(dataset="ETTh1", trials=TRIALS, epochs=2, seed=SEED, space=str(space_file),
                          data_dir=str(shared_data_dir), limit_train_batches=2, limit_eval_batches=1,
                          tracking_uri=f"sqlite:///{root / 'mlflow.db'}", storage_path=str(root / "ray"))
    outcome = run_search(config)
    return root, outcome


def test_search_logs_a_parent_and_one_child_run_per_trial(finished_search) -> None:
    from benchmarks.grid.configs import load_config_file

    root, outcome = finished_search
    assert not outcome.interrupted
    client, runs = store(root)
    (parent,) = kind(runs, "search")
    children = kind(runs, "trial")
    assert len(runs) == 1 + TRIALS and len(children) == TRIALS
    tags = parent.data.tags
    assert (tags["dataset"], tags["model"], tags["pred_len"], tags["seq_len"], tags["protocol"]) == (
        "ETTh1", "mixmamba", "96", "96", "tslib-M-L96")
    params = parent.data.params
    assert params["space.model.top_k"] == "int [2, num_experts]"
    assert (params["trials"], params["epochs"], params["scheduler"], params["seed"]) == ("4", "2", "asha", str(SEED))
    assert parent.info.status == "FINISHED"

    trial_ids = {run.data.tags["trial_id"] for run in children}
    assert len(trial_ids) == TRIALS
    states = {}
    for run in children:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        state = run.data.tags["trial_state"]
        states[run.data.tags["trial_id"]] = state
        if state == "failed":
            assert run.info.status == "FAILED"
            assert run.data.tags["error"].startswith("NonFiniteLossError: mixmamba on ETTh1 diverged")
            assert run.data.params["train.learning_rate"] == "1e+30"
            continue
        assert run.info.status == "FINISHED"
        steps = [metric.step for metric in client.get_metric_history(run.info.run_id, "val_loss")]
        assert steps == list(range(1, len(steps) + 1)) and 1 <= len(steps) <= 2
        assert run.data.params["train.epochs"] == "2" and run.data.params["model.d_model"] == "8"
        if state == "finished":
            assert {"test_mse", "test_mae", "best_val_loss"} <= set(run.data.metrics)
            artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
            assert {"config.yaml", "model", "plots"} <= artifacts
    assert outcome.counts["failed"] == sum(state == "failed" for state in states.values()) >= 1
    assert sum(state == "finished" for state in states.values()) >= 1

    # The best trial is the one with the lowest validation loss of all, and its config is on the parent.
    best = min((run for run in children if states[run.data.tags["trial_id"]] != "failed"),
               key=lambda run: min(m.value for m in client.get_metric_history(run.info.run_id, "val_loss")))
    assert tags["best_trial_id"] == best.data.tags["trial_id"] == outcome.best_trial_id
    assert parent.data.metrics["best_val_loss"] == pytest.approx(outcome.best_value)
    for key in ("model.num_experts", "model.top_k", "model.patch_len", "model.stride", "train.learning_rate"):
        assert params[f"best.{key}"] == best.data.params[key]

    artifacts = {item.path for item in client.list_artifacts(parent.info.run_id)}
    assert "best_config.yaml" in artifacts
    plots = {item.path for item in client.list_artifacts(parent.info.run_id, "plots")}
    assert plots == {"plots/optimization_history.png", "plots/param_importances.png"}
    for name in plots:
        local = client.download_artifacts(parent.info.run_id, name, str(root))
        assert Path(local).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    (entry,) = load_config_file(outcome.best_config_path)
    assert (entry.model, entry.dataset, entry.pred_len, entry.seq_len) == ("mixmamba", "ETTh1", 96, 96)
    assert entry.model_overrides["top_k"] == int(params["best.model.top_k"])
    assert entry.train_overrides["learning_rate"] == float(params["best.train.learning_rate"])


def wait_for_finished_trial(root: Path, process: subprocess.Popen, timeout_s: float) -> str:
    """Poll the MLflow SQLite file until a child run has ended; its run id."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, "the search ended before a trial did"
        database = root / "mlflow.db"
        if database.exists():
            try:
                with sqlite3.connect(database, timeout=1) as connection:
                    rows = connection.execute(
                        "select runs.run_uuid from runs join tags on runs.run_uuid = tags.run_uuid "
                        "where tags.key = 'trial_state' and runs.status = 'FINISHED'").fetchall()
            except sqlite3.OperationalError:
                rows = []
            if rows:
                return rows[0][0]
        time.sleep(1)
    raise AssertionError(f"no trial finished within {timeout_s} s")


def wait_until_recorded(experiment_dir: Path, timeout_s: float = 60) -> None:
    """Poll until the folder's digest record matches Tune's files. A SIGKILL in the instant between Tune's save and
    the record leaves a folder `--resume` refuses by design (tests/reliability/test_resume_trust.py); this test kills
    a driver at any other moment."""
    from search.folder_trust import _problem

    deadline = time.monotonic() + timeout_s
    while _problem(experiment_dir) is not None:
        assert time.monotonic() < deadline, _problem(experiment_dir)
        time.sleep(0.05)


def test_killed_search_resumes_without_losing_or_repeating_trials(finished_search, space_file: Path,
                                                                   shared_data_dir: Path, tmp_path: Path) -> None:
    import ray

    # Both drivers join this module's Ray runtime (as on a cluster), which spares two Ray starts.
    address = ray.get_runtime_context().gcs_address
    args = search_args(space_file, shared_data_dir, tmp_path, "--address", address)
    process = subprocess.Popen(CLI + args, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    experiment_dir = tmp_path / "ray" / f"mixmamba-ETTh1-pred96-seed{SEED}"
    try:
        ended_run = wait_for_finished_trial(tmp_path, process, timeout_s=400)
        wait_until_recorded(experiment_dir)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    first_output = process.stdout.read()
    assert f"folder {experiment_dir}" in first_output
    # the live view: one status line per change, e.g. "search NAME | 2 running, 0 finished, ... | best - | 0:12/10:00"
    status = [line for line in first_output.splitlines() if line.startswith(f"search {experiment_dir.name} | ")]
    assert status and all(" running, " in line and " | best " in line for line in status)
    client, runs = store(tmp_path)
    before = {run.info.run_id: run for run in kind(runs, "trial")}
    ended_before = {run_id: run.info.end_time for run_id, run in before.items() if run.info.status != "RUNNING"}
    assert ended_run in ended_before and len(kind(runs, "search")) == 1

    resumed = subprocess.run(CLI + args + ["--resume"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "rank  trial" in resumed.stdout and f"config written to {experiment_dir / 'best_config.yaml'}" in (
        resumed.stdout)
    client, runs = store(tmp_path)
    (parent,) = kind(runs, "search")
    assert parent.info.status == "FINISHED"
    children = kind(runs, "trial")
    trial_ids = [run.data.tags["trial_id"] for run in children]
    assert len(children) == TRIALS and len(set(trial_ids)) == TRIALS
    assert all(run.info.status in ("FINISHED", "FAILED") for run in children)
    after = {run.info.run_id: run for run in children}
    for run_id, end_time in ended_before.items():
        # kept once: the same run, not logged again
        assert after[run_id].info.end_time == end_time
    configs = proposed_in_order(experiment_dir)
    assert len(configs) == TRIALS and {trial_ids.count(t) for t in trial_ids} == {1}

    # Same seed, same space: the killed-and-resumed search proposed the same first configs as the in-process one.
    _, outcome = finished_search
    assert configs[:2] == proposed_in_order(outcome.experiment_dir)[:2]


@pytest.mark.parametrize(("space", "extra", "message"), [
    ("model:\n  d_modl: {choices: [8]}\n", [], "model.d_modl is not a mixmamba setting; valid keys are"),
    ("model:\n  d_model: {low: 64, high: 32}\n", [], "model.d_model: low 64 > high 32 leaves an empty range"),
    ("model:\n  num_experts: {low: 2, high: 3}\n  top_k: {low: 4, high: num_experts}\n", [],
     "model.top_k: impossible constraint"),
    (TINY_SPACE, ["--trials", "0"], "--trials 0 must be a positive integer"),
    (TINY_SPACE, ["--address", "127.0.0.1:1"], "--address 127.0.0.1:1: nothing answers there"),
])
def test_bad_input_exits_2_with_one_line(space: str, extra: list[str], message: str, shared_data_dir: Path,
                                         tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(space)
    result = subprocess.run(CLI + search_args(path, shared_data_dir, tmp_path) + extra, cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert not (tmp_path / "ray").exists()
