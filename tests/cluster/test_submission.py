"""What `mixbench submit` sends and refuses, the token lookup, and the one-line errors that need no cluster."""
from __future__ import annotations

import importlib.metadata
import socket
from pathlib import Path

import pytest

from benchmarks.errors import ClusterError, SettingError, TrackingError
from cluster.job_server import check_address, exit_code, read_token
from cluster.submission import Submission, check_tracking_uri, project_requirements

REPO_ROOT = Path(__file__).resolve().parents[2]


def submission(**overrides) -> Submission:
    fields = dict(
        command=("search", "--dataset", "weather"), working_dir=REPO_ROOT, tracking_uri="http://10.0.0.5:5000"
    )
    return Submission(**{**fields, **overrides})


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_entrypoint_runs_the_submitted_command_with_the_shared_storage_path():
    job = submission(storage_path="/mnt/shared/ray results")
    assert job.entrypoint() == "python -m cli search --dataset weather --storage-path '/mnt/shared/ray results'"
    assert job.has_storage_path
    assert not submission().has_storage_path
    assert submission().entrypoint() == "python -m cli search --dataset weather"


def test_runtime_env_uploads_the_code_and_points_every_trial_at_the_tracking_server():
    env = submission(env={"MIXBENCH_DATA_DIR": "/mnt/data"}).runtime_env()
    assert env["working_dir"] == str(REPO_ROOT)
    assert {".venv", ".git", "mlruns", "mlflow.db", "ray_results"} <= set(env["excludes"])
    assert env["env_vars"]["MLFLOW_TRACKING_URI"] == "http://10.0.0.5:5000"
    assert env["env_vars"]["MIXBENCH_DATA_DIR"] == "/mnt/data"
    assert "pip" not in env


def test_pip_installs_the_projects_requirements_but_not_a_second_ray():
    try:
        importlib.metadata.requires("mixbench")
    except importlib.metadata.PackageNotFoundError:
        with pytest.raises(SettingError, match="pip install -e"):
            project_requirements()
        return
    requirements = submission(pip=True).runtime_env()["pip"]
    names = {r.split(">")[0].split("=")[0].split("[")[0].strip().lower() for r in requirements}
    assert {"torch", "optuna", "mlflow"} <= names
    assert "ray" not in names and not any("extra ==" in r for r in requirements)


@pytest.mark.parametrize(
    "uri, reason",
    [
        (None, "required"),
        ("sqlite:///mlflow.db", "one machine's disk"),
        ("./mlruns", "one machine's disk"),
        ("file:///tmp/mlruns", "one machine's disk"),
        ("postgresql://db:5432/mlflow", "not a tracking server"),
    ],
)
def test_tracking_stores_a_single_machine_holds_are_refused(uri, reason):
    with pytest.raises(TrackingError, match=reason) as refused:
        check_tracking_uri(uri)
    assert refused.value.setting == "tracking_uri"
    assert "hunter2" not in str(refused.value)
    assert "\n" not in str(refused.value)
    check_tracking_uri(uri, allow_local=True)


@pytest.mark.parametrize("uri", ["http://10.0.0.5:5000", "https://mlflow.example.org", "databricks"])
def test_tracking_servers_are_accepted(uri):
    check_tracking_uri(uri)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"command": ()}, "nothing to run"),
        ({"command": ("jobs", "list")}, "runs on your machine"),
        ({"working_dir": REPO_ROOT / "cluster"}, "no cli.py"),
        ({"command": ("search", "--tracking-uri", "http://x:5000")}, "give it to `mixbench submit`"),
        ({"command": ("search", "--storage-path=/a"), "storage_path": "/b"}, "given twice"),
        ({"env": {"RAY_AUTH_TOKEN": "x"}}, "leave it out"),
        ({"env": {"MLFLOW_TRACKING_URI": "http://x"}}, "leave it out"),
        ({"env": {"1BAD": "x"}}, "not a variable name"),
    ],
)
def test_bad_submissions_are_refused_with_the_fix(overrides, message):
    with pytest.raises(SettingError, match=message):
        submission(**overrides)


def test_token_comes_from_the_flag_or_ray_auth_token_only(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("local-session\n")
    (tmp_path / "path_token").write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "path_token"))
    assert read_token() is None
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert read_token() == "from-env"
    (tmp_path / "flag_token").write_text(" from-flag \n")
    assert read_token(tmp_path / "flag_token") == "from-flag"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ClusterError, match="token_file .*empty"):
        read_token(tmp_path / "empty")
    with pytest.raises(ClusterError, match="cannot read"):
        read_token(tmp_path / "missing")


@pytest.mark.parametrize("address", ["127.0.0.1:8265", "ray://head:10001", "http://", "head"])
def test_addresses_without_a_dashboard_url_are_refused(address):
    with pytest.raises(ClusterError, match="dashboard URL"):
        check_address(address)
    assert check_address("http://head:8265/") == "http://head:8265"


def test_job_statuses_map_to_documented_exit_codes():
    assert [exit_code(s) for s in ("SUCCEEDED", "FAILED", "STOPPED")] == [0, 1, 3]


def test_cli_wrong_address_is_one_line_and_exit_2(mixbench):
    address = f"http://127.0.0.1:{closed_port()}"
    result = mixbench.run("submit", "--address", address, "--tracking-uri", "http://127.0.0.1:5000", "--", "search")
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: --address {address}: no Ray job server answers there; give the head's dashboard "
                      "URL (http://HEAD:8265) and check that the cluster is up (`ray status` on the head)"]
    assert "Traceback" not in result.stderr
    for command in (["list"], ["status", "raysubmit_x"], ["logs", "raysubmit_x"], ["stop", "raysubmit_x"]):
        result = mixbench.run("jobs", *command, "--address", address)
        assert result.returncode == 2 and result.stderr.startswith(f"error: --address {address}:"), result.stderr


def test_cli_refuses_a_local_tracking_store_before_contacting_the_cluster(mixbench):
    result = mixbench.run(
        "submit", "--address", f"http://127.0.0.1:{closed_port()}", "--tracking-uri", "sqlite:///mlflow.db",
        "--", "search", "--dataset", "weather",
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: --tracking-uri sqlite:///mlflow.db: lives on")
