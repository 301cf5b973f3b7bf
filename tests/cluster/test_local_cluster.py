"""`mixbench submit` and `mixbench jobs` against a real two-node Ray cluster with token authentication and a real
MLflow tracking server: a tiny ETTh1 search end to end, then a wrong token, a failing job and a stopped job."""
from __future__ import annotations

import time

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow  # a real local Ray cluster with the Jobs API and an MLflow server

SEARCH = ["search", "--dataset", "ETTh1", "--model", "dlinear", "--pred-len", "24",
          "--trials", "2", "--epochs", "1", "--limit-train-batches", "2", "--limit-eval-batches", "2"]


def connection(cluster) -> list[str]:
    return ["--address", cluster.address, "--token-file", str(cluster.token_file)]


def output(result) -> str:
    return f"--- stdout\n{result.stdout[-6000:]}\n--- stderr\n{result.stderr[-3000:]}"


def test_search_job_runs_on_the_cluster_and_logs_parent_and_child_runs_over_http(
    ray_cluster, tracking_server, shared_data_dir, mixbench
):
    result = mixbench.run(
        "submit", *connection(ray_cluster), "--tracking-uri", tracking_server.uri,
        "--storage-path", str(ray_cluster.storage_path), "--env", f"MIXBENCH_DATA_DIR={shared_data_dir}",
        "--wait", "--", *SEARCH,
        timeout=600,
    )
    assert result.returncode == 0, output(result)
    job_id = result.stdout.splitlines()[0]
    assert job_id.startswith("raysubmit_")
    assert f"job {job_id} SUCCEEDED" in result.stderr
    token = ray_cluster.token_file.read_text()
    assert token not in result.stdout + result.stderr

    client = MlflowClient(tracking_uri=tracking_server.uri)
    experiment = client.get_experiment_by_name("mixbench")
    runs = client.search_runs([experiment.experiment_id])
    parents = [run for run in runs if run.data.tags.get("mixbench.kind") == "search"]
    assert len(parents) == 1
    parent = parents[0]
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2
    for child in children:
        assert child.data.tags["mixbench.kind"] == "trial"
        assert child.data.tags["dataset"] == "ETTh1" and child.data.tags["model"] == "dlinear"
        assert child.info.status == "FINISHED"
        assert "val_loss" in child.data.metrics
        # Served artifacts: the trial uploaded through the server, into the server's store, not a worker's disk.
        assert child.info.artifact_uri.startswith("mlflow-artifacts:")
    stored = [path for path in tracking_server.artifacts.rglob("*") if path.is_file()]
    assert stored, "no artifact reached the tracking server's store"
    assert any(ray_cluster.storage_path.rglob("*")), "Ray Tune wrote nothing to the storage path"

    listed = mixbench.run("jobs", "list", *connection(ray_cluster))
    assert listed.returncode == 0 and f"{job_id}\tSUCCEEDED" in listed.stdout
    status = mixbench.run("jobs", "status", job_id, *connection(ray_cluster))
    assert status.returncode == 0 and status.stdout.startswith("SUCCEEDED")
    logs = mixbench.run("jobs", "logs", job_id, *connection(ray_cluster))
    assert logs.returncode == 0 and "python -m cli search --dataset ETTh1" in logs.stdout


def test_missing_wrong_token_and_non_ray_address_are_one_line_exit_2(ray_cluster, tracking_server, mixbench, tmp_path):
    missing = mixbench.run("jobs", "list", "--address", ray_cluster.address)
    assert missing.returncode == 2
    assert missing.stderr.startswith(f"error: the cluster at {ray_cluster.address} wants its auth token; pass "
                                     "--token-file FILE")

    wrong = tmp_path / "wrong_token"
    wrong.write_text("not-the-clusters-token-5f3a")
    refused = mixbench.run("jobs", "list", "--address", ray_cluster.address, "--token-file", str(wrong))
    assert refused.returncode == 2 and "rejects this token" in refused.stderr
    assert "not-the-clusters-token-5f3a" not in refused.stdout + refused.stderr

    not_ray = mixbench.run("jobs", "list", "--address", tracking_server.uri, "--token-file", str(wrong))
    assert not_ray.returncode == 2 and "is not a Ray dashboard" in not_ray.stderr

    unknown = mixbench.run("jobs", "status", "raysubmit_nosuch", *connection(ray_cluster))
    assert unknown.returncode == 2 and "error: job raysubmit_nosuch: no such job" in unknown.stderr
    assert "`mixbench jobs list` with the same --address lists them" in unknown.stderr
    for result in (missing, refused, not_ray, unknown):
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_failing_job_exits_1_with_its_message(ray_cluster, tracking_server, mixbench):
    result = mixbench.run(
        "submit", *connection(ray_cluster), "--tracking-uri", tracking_server.uri, "--storage-path",
        str(ray_cluster.storage_path), "--wait", "--", "search", "--dataset", "nosuch",
    )
    assert result.returncode == 1, output(result)
    job_id = result.stdout.splitlines()[0]
    assert f"job {job_id} FAILED: " in result.stderr
    # The search's own one-line error, streamed from the cluster.
    assert any(line.startswith("error: ") and "nosuch" in line for line in result.stdout.splitlines()), output(result)
    status = mixbench.run("jobs", "status", job_id, *connection(ray_cluster))
    assert status.stdout.startswith("FAILED")


def test_stopped_job_ends_submit_wait_with_exit_3(ray_cluster, tracking_server, shared_data_dir, mixbench):
    waiting = mixbench.start(
        "submit", *connection(ray_cluster), "--tracking-uri", tracking_server.uri,
        "--storage-path", str(ray_cluster.storage_path), "--env", f"MIXBENCH_DATA_DIR={shared_data_dir}",
        "--wait", "--", "search", "--dataset", "ETTh1", "--model", "dlinear", "--trials", "50",
    )
    try:
        job_id = waiting.stdout.readline().strip()
        assert job_id.startswith("raysubmit_"), waiting.stderr.read() if waiting.poll() is not None else job_id
        deadline = time.monotonic() + 60
        while not mixbench.run("jobs", "status", job_id, *connection(ray_cluster)).stdout.startswith("RUNNING"):
            assert time.monotonic() < deadline, "the job never started running"
            time.sleep(1)
        stop = mixbench.run("jobs", "stop", job_id, *connection(ray_cluster))
        assert stop.returncode == 0 and stop.stdout.strip() == f"stop requested for {job_id}"
        assert waiting.wait(timeout=120) == 3
        assert f"job {job_id} STOPPED" in waiting.stderr.read()
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
        waiting.stdout.close()
        waiting.stderr.close()
    again = mixbench.run("jobs", "stop", job_id, *connection(ray_cluster))
    assert again.returncode == 0 and again.stdout.strip() == f"{job_id} had already ended: STOPPED"
    follow = mixbench.run("jobs", "logs", job_id, "--follow", *connection(ray_cluster))
    assert follow.returncode == 3
