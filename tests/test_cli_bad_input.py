"""The CLI's bad-input matrix: every row is one wrong dataset, config, --set, space, flag, tracking URI, address,
horizon, seed or format, and each must be answered with exactly one line on stderr (no traceback) and exit code 2.

Most rows run in this process through `cli.main`; a few run the real `mixbench` entry in a subprocess.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import cli

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["train", "--model", "dlinear", "--dataset", "ETTh1"]
SEARCH = ["search", "--model", "dlinear", "--dataset", "ETTh1", "--data-dir", "{data}"]

# (arguments, a piece of the one-line message); {tmp} is a private folder, {data} the shared data folder.
MATRIX: list[tuple[list[str], str]] = [
    (["bogus"], "No such command 'bogus'"),
    (["--no-such-flag"], "No such option '--no-such-flag'"),
    (["train", "--dataset", "ETTh1"], "Missing option '--model'"),
    # datasets
    (["train", "--model", "dlinear", "--dataset", "ettx9"], "unknown dataset 'ettx9'"),
    (["data", "info", "nope"], "unknown dataset 'nope'"),
    (TRAIN + ["--data-dir", "{data}", "--seq-len", "20000", "--pred-len", "96"], "seq_len"),
    # models and --set
    (["train", "--model", "nope", "--dataset", "ETTh1"], "unknown model 'nope'"),
    (TRAIN + ["--set", "moving_avg"], "is not key=value"),
    (TRAIN + ["--set", "nosuch=1"], "dlinear has no such setting"),
    (TRAIN + ["--set", "learning_rate=1e-3"], "training settings take the train. prefix"),
    (TRAIN + ["--set", "seq_len=48"], "use --seq-len / --pred-len instead"),
    (TRAIN + ["--set", "train.learning_rate=-1"], "train.learning_rate=-1 is invalid"),
    (TRAIN + ["--set", "train.optimizer=sgd"], "train.optimizer='sgd' is invalid"),
    (TRAIN + ["--set", "train.nosuch=1"], "unknown training setting"),
    (TRAIN + ["--set", "train.batch_size=[1"], "the value is not valid YAML"),
    # flags, horizons, seeds, devices
    (TRAIN + ["--pred-len", "abc"], "Invalid value for '--pred-len'"),
    (TRAIN + ["--seed", "1.5"], "Invalid value for '--seed'"),
    (TRAIN + ["--features", "X"], "Invalid value for '--features'"),
    (TRAIN + ["--epochs", "0"], "train.epochs=0 is invalid"),
    (TRAIN + ["--limit-train-batches", "-2"], "train.limit_train_batches=-2 is invalid"),
    (TRAIN + ["--device", "tpu"], "device 'tpu'"),
    (["data", "info", "ETTh1", "--data-dir", "{data}", "--pred-len", "0"], "pred_len"),
    # tracking URIs and the UI
    (TRAIN + ["--tracking-uri", "http://127.0.0.1:1"], "does not answer"),
    (TRAIN + ["--tracking-uri", "http://user:hunter2@127.0.0.1:1"], "http://***@127.0.0.1:1 does not answer"),
    (["ui", "--tracking-uri", "sqlite:///{tmp}/none.db"], "no MLflow store at"),
    (["ui", "--tracking-uri", "http://127.0.0.1:5000"], "is already a tracking server"),
    (["ui", "--port", "70000"], "Invalid value for '--port'"),
    # search: spaces, flags, addresses
    (SEARCH + ["--trials", "0"], "--trials 0 must be a positive integer"),
    (SEARCH + ["--epochs", "-1"], "--epochs -1 must be a positive integer"),
    (SEARCH + ["--scheduler", "hyperband"], "Invalid value for '--scheduler'"),
    (SEARCH + ["--space", "{tmp}/missing.yaml"], "no such file"),
    (SEARCH + ["--space", "{tmp}/broken.yaml"], "is not valid YAML"),
    (SEARCH + ["--space", "{tmp}/unknown.yaml"], "model.nosuch is not a dlinear setting"),
    (SEARCH + ["--gpus-per-trial", "-1"], "--gpus-per-trial -1.0 must be >= 0"),
    (SEARCH + ["--time-budget", "-5"], "--time-budget -5.0 must be >= 0"),
    (SEARCH + ["--search-seq-len", "a,b"], "--search-seq-len"),
    (SEARCH + ["--address", "not an address"], "is not a Ray address"),
    (SEARCH + ["--address", "127.0.0.1:1"], "nothing answers there"),
    (SEARCH + ["--resume", "--storage-path", "{tmp}/ray"], "--resume: no search to resume"),
    # benchmark, leaderboard, table: lists, configs, formats, outputs
    (["benchmark", "--data-dir", "{data}", "--datasets", ","], "--datasets ',' is empty"),
    (["benchmark", "--data-dir", "{data}", "--datasets", "ETTh1", "--horizons", "96,x"], "must be comma-separated integers"),
    (["benchmark", "--data-dir", "{data}", "--datasets", "ETTh1", "--configs", "{tmp}/missing.yaml"], "--configs"),
    (["benchmark", "--data-dir", "{data}", "--datasets", "ETTh1", "--seeds", "0"], "--seeds"),
    (["benchmark", "--data-dir", "{data}", "--datasets", "ETTh1", "--models", "nope"], "nope"),
    (["leaderboard", "--format", "xml"], "Invalid value for '--format'"),
    (["leaderboard", "--tracking-uri", "sqlite:///{tmp}/none.db"], "no MLflow store at"),
    (["table", "--format", "docx"], "Invalid value for '--format'"),
    (["table", "--reference", "other"], "Invalid value for '--reference'"),
    # cluster
    (["submit", "--working-dir", "{repo}", "--address", "http://127.0.0.1:1"], "nothing to run"),
    (["submit", "--working-dir", "{repo}", "--address", "http://127.0.0.1:1", "--", "search", "--dataset", "ETTh1"],
     "--tracking-uri: required in cluster mode"),
    (["submit", "--working-dir", "{repo}", "--address", "http://127.0.0.1:1", "--env", "BAD", "--", "search", "--dataset", "ETTh1"],
     "--env BAD"),
    (["submit", "--working-dir", "{repo}", "--address", "http://127.0.0.1:1", "--tracking-uri", "http://127.0.0.1:5000",
      "--storage-path", "{tmp}/ray", "--", "ui"], "no Ray job server answers there"),
    (["jobs", "list", "--address", "http://127.0.0.1:1"], "127.0.0.1:1"),
]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private cwd with no tracking store, token or cluster address from the environment."""
    for name in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN", "MIXBENCH_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty" / "ETT-small").mkdir(parents=True)
    (tmp_path / "broken.yaml").write_text("model: {moving_avg: [5\n")
    (tmp_path / "unknown.yaml").write_text("model:\n  nosuch: {choices: [1]}\n")
    return tmp_path


def fill(arguments: list[str], tmp: Path, data: Path) -> list[str]:
    return [argument.format(tmp=tmp, data=data, repo=REPO_ROOT) for argument in arguments]


@pytest.mark.parametrize(("arguments", "message"), MATRIX, ids=[" ".join(row[0])[:60] for row in MATRIX])
def test_bad_input_is_one_line_and_exit_2(arguments: list[str], message: str, workdir: Path, shared_data_dir: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(fill(arguments, workdir, shared_data_dir))
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert exit_info.value.code == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert message.format(tmp=workdir) in lines[0], lines[0]
    assert "Traceback" not in captured.err + captured.out


@pytest.mark.parametrize(("arguments", "message"), [
    (["bogus"], "No such command 'bogus'"),
    (TRAIN + ["--set", "nosuch=1"], "dlinear has no such setting"),
    (SEARCH + ["--address", "127.0.0.1:1"], "nothing answers there"),
    (TRAIN + ["--data-dir", "{tmp}/empty"], "downloading ETT-small/ETTh1.csv"),
])
def test_the_real_entry_point_answers_one_line_and_exit_2(arguments: list[str], message: str, tmp_path: Path,
                                                          shared_data_dir: Path) -> None:
    entry = [sys.executable, "-c", "import sys, cli; sys.argv[0] = 'mixbench'; cli.main()"]
    # HF_HUB_OFFLINE: the missing-file row must fail the same with and without a network
    result = subprocess.run(entry + fill(arguments, tmp_path, shared_data_dir), cwd=tmp_path, capture_output=True,
                            text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT),
                                                         "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"})
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr


def test_debug_shows_the_traceback(workdir: Path) -> None:
    """The one-line form is a choice, not a swallowed error: --debug re-raises."""
    from benchmarks.errors import InputError

    with pytest.raises(InputError, match="unknown model 'nope'"):
        cli.main(["--debug", "train", "--model", "nope", "--dataset", "ETTh1"])
