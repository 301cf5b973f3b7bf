"""Finding 1 of issue 20: no credential lands in a file, an MLflow param/tag, a Tune pickle or a Ray job record.

`submit` refuses credentials in --tracking-uri and secret-looking --env names (one line, exit 2); a search given
`http://user:password@host` stores the URI bare everywhere and still reaches the server (credentials in the
environment, which the local Ray workers inherit).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from cli import main

REPO_ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "s3cret-pw-20"
SPACE = "model:\n  moving_avg: 25\ntrain:\n  learning_rate: {choices: [0.001, 0.002]}\n  batch_size: 16\n"


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exited:
        main(args)
    return exited.value.code, capsys.readouterr().err


@pytest.mark.parametrize("flags", [
    ["--tracking-uri", f"http://alice:{PASSWORD}@10.0.0.5:5000"],
    ["--tracking-uri", "http://10.0.0.5:5000", "--env", f"MLFLOW_TRACKING_PASSWORD={PASSWORD}"],
    ["--tracking-uri", "http://10.0.0.5:5000", "--env", f"AWS_SECRET_ACCESS_KEY={PASSWORD}"],
    ["--tracking-uri", "http://10.0.0.5:5000", "--env", f"HF_TOKEN={PASSWORD}"],
])
def test_submit_refuses_credentials_before_contacting_a_cluster(flags, capsys):
    # The address is never contacted: the submission is refused while it is checked.
    code, err = run_cli(["submit", "--address", "http://127.0.0.1:9", "--working-dir", str(REPO_ROOT), *flags,
                         "--", "search", "--dataset", "ETTh1"], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert PASSWORD not in err
    assert "docs/cluster.md" in err


@pytest.mark.slow  # a real search (Ray, a real `mlflow server` on 127.0.0.1)
def test_a_search_stores_no_tracking_password(mlflow_server, shared_data_dir: Path, tmp_path: Path, monkeypatch):
    from mlflow import MlflowClient

    from search.config import SearchConfig
    from search.runner import run_search

    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_URI"):
        monkeypatch.setenv(name, "")  # records the variable, so the search's credentials are removed afterwards
        monkeypatch.delenv(name)
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    uri = mlflow_server.uri.replace("http://", f"http://alice:{PASSWORD}@")
    config = SearchConfig(dataset="ETTh1", model="dlinear", trials=2, epochs=1, seed=5, space=str(space),
                          data_dir=str(shared_data_dir), limit_train_batches=3, limit_eval_batches=2,
                          scheduler="fifo", tracking_uri=uri, storage_path=str(tmp_path / "ray"),
                          experiment="secrets")
    outcome = run_search(config)
    assert outcome.counts["finished"] == 2

    leaked = [path for path in outcome.experiment_dir.rglob("*")
              if path.is_file() and PASSWORD.encode() in path.read_bytes()]
    assert leaked == []
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    experiment = client.get_experiment_by_name("secrets")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 3  # the parent and both trials reached the server
    for run in runs:
        assert not any(PASSWORD in str(value) for value in [*run.data.params.values(), *run.data.tags.values()])
    # The credentials went to the environment (what MLflow and the local Ray workers read), not into the URI.
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == PASSWORD
