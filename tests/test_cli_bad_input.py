"""The CLI's bad-input matrix: every row is one wrong dataset, config, --set, space, flag, tracking URI, address,
horizon, seed or format, and each must be answered with exactly one line on stderr (no traceback) and exit code 2.

Most rows run in this process through `cli.main`; a few run the real `mixbench` entry in a subprocess.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest

import cli
from benchmarks.errors import MixbenchError
from cluster.job_server import ClusterLostError, JobServer

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["train", "--model", "dlinear", "--dataset", "ETTh1"]
SEARCH = ["search", "--model", "dlinear", "--dataset", "ETTh1", "--data-dir", "{data}"]

# (arguments, a piece of the one-line message); {tmp} is a private folder, {data} the shared data folder.
MATRIX: list[tuple[list[str], str]] = [
    (["bogus"], "No such command 'bogus'"),
    (["--no-such-flag"], "No such option '--no-such-flag'"),
    (["train", "--dataset", "ETTh1"], "Missing option '--model'"),
    # datasets
    (["train", "--model", "dlinear", "--dataset", "ettx9"], "unknown --dataset 'ettx9'"),
    (["data", "info", "nope"], "unknown dataset 'nope'"),
    (TRAIN + ["--data-dir", "{data}", "--seq-len", "20000", "--pred-len", "96"], "use a shorter --seq-len"),
    # models and --set
    (["train", "--model", "nope", "--dataset", "ETTh1"], "--model 'nope'"),
    (TRAIN + ["--set", "moving_avg"], "is not key=value"),
    (TRAIN + ["--set", "nosuch=1"], "name the section, model.nosuch or train.nosuch"),
    (TRAIN + ["--set", "model.nosuch=1"], "--set model.nosuch is not a dlinear setting"),
    (TRAIN + ["--set", "model.seq_len=48"], "--set model.seq_len comes from the data protocol"),
    (TRAIN + ["--set", "train.learning_rate=-1"], "train.learning_rate=-1 is invalid"),
    (TRAIN + ["--set", "train.optimizer=sgd"], "train.optimizer='sgd' is invalid"),
    (TRAIN + ["--set", "train.nosuch=1"], "--set train.nosuch is not a dlinear setting"),
    (TRAIN + ["--set", "train.batch_size=[1"], "the value is not valid YAML"),
    # flags, horizons, seeds, devices
    (TRAIN + ["--pred-len", "abc"], "Invalid value for '--pred-len'"),
    (TRAIN + ["--seed", "1.5"], "Invalid value for '--seed'"),
    (TRAIN + ["--features", "X"], "Invalid value for '--features'"),
    (TRAIN + ["--epochs", "0"], "--epochs=0 is invalid"),
    (TRAIN + ["--limit-train-batches", "-2"], "--limit-train-batches=-2 is invalid"),
    (TRAIN + ["--device", "tpu"], "device 'tpu'"),
    (["data", "info", "ETTh1", "--data-dir", "{data}", "--pred-len", "0"], "--pred-len must be a positive integer"),
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
    (SEARCH + ["--space", "{tmp}/compile.yaml", "--fuse", "2"], "pass --fuse off or fix train.compile: false"),
    (SEARCH + ["--space", "{tmp}/compile.yaml", "--config-seeds", "2"],
     "fix train.compile: false in the space (--config-seeds trains a configuration's seeds as one group)"),
    (SEARCH + ["--gpus-per-trial", "-1"], "--gpus-per-trial -1.0 must be >= 0"),
    (SEARCH + ["--time-budget", "-5"], "--time-budget -5.0 must be >= 0"),
    (SEARCH + ["--search-seq-len", "a,b"], "--search-seq-len"),
    (SEARCH + ["--address", "not an address"], "is not a Ray address"),
    (SEARCH + ["--address", "127.0.0.1:1"], "nothing answers there"),
    (SEARCH + ["--resume", "--storage-path", "{tmp}/ray"], "--resume: no search to resume"),
    # benchmark, leaderboard, table: lists, configs, formats, outputs
    (["benchmark", "--data-dir", "{data}", "--datasets", ","], "--datasets ',' is empty"),
    (["benchmark", "--data-dir", "{data}", "--datasets", "ETTh1", "--horizons", "96,x"],
     "must be comma-separated integers"),
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
    (["submit", "--working-dir", "{repo}", "--address", "http://127.0.0.1:1", "--env", "BAD", "--", "search",
      "--dataset", "ETTh1"],
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
    (tmp_path / "compile.yaml").write_text("train:\n  compile: {choices: [true]}\n")
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
    (TRAIN + ["--set", "nosuch=1"], "--set 'nosuch=1': name the section"),
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
    with pytest.raises(MixbenchError, match="model 'nope'") as raised:
        cli.main(["--debug", "train", "--model", "nope", "--dataset", "ETTh1"])
    assert raised.value.setting == "model"


@click.command()
@click.option("--pred-len", type=int)
@click.option("--time-budget", "time_budget_s", type=float)
@click.option("-f", "--format", "output_format")
@click.option("--set", "settings", multiple=True)
@click.argument("dataset")
def with_set(pred_len: int, time_budget_s: float, output_format: str, settings: tuple[str, ...], dataset: str) -> None:
    """A command shaped like `mixbench train`: options named as their flag or not, `--set`, an argument."""


@click.command()
@click.option("--pred-len", type=int)
def without_set(pred_len: int) -> None:
    """A command shaped like `mixbench search`: model settings come from a file, not from `--set`."""


@pytest.mark.parametrize(("command", "setting", "flag"), [
    (with_set, "pred_len", "--pred-len"),
    (with_set, "pred-len", "--pred-len"),
    (with_set, "time_budget_s", "--time-budget"),  # the option's name differs from its flag
    (with_set, "format", "--format"),  # the setting is spelt as the flag, the option is named output_format
    (with_set, "output_format", "--format"),  # the longest flag, not -f
    (with_set, "settings", "--set"),
    (with_set, "model.d_model", "--set model.d_model"),
    (with_set, "train.batch_size", "--set train.batch_size"),
    (with_set, "dataset", "dataset"),  # an argument has no flag
    (with_set, "experiment", "experiment"),  # no such option
    (without_set, "model.d_model", "model.d_model"),  # no --set to name
])
def test_a_setting_is_spelt_as_the_flag_of_the_command(command: click.Command, setting: str, flag: str) -> None:
    assert cli.flag_for(command, setting) == flag


@pytest.mark.parametrize(("arguments", "name"), [
    (["--debug", "train", "--model", "x"], "train"),
    (["jobs", "list", "--address", "http://x:1"], "list"),
    (["submit", "--address", "http://x:1", "--", "jobs", "list"], "submit"),
    ([], "cli"),
])
def test_the_invoked_command_is_found_again_from_the_arguments(arguments: list[str], name: str) -> None:
    assert cli.invoked_command(arguments).name == name


SUBMIT = ["submit", "--working-dir", "{repo}", "--address", "http://127.0.0.1:1"]


# (arguments, the whole line): library errors name a setting; the CLI writes it as the flag of the command run.
RENDERED: list[tuple[list[str], str]] = [
    (SEARCH + ["--trials", "0"], "error: --trials 0 must be a positive integer"),
    (SEARCH + ["--time-budget", "-5"], "error: --time-budget -5.0 must be >= 0 seconds (0 = no budget)"),
    (TRAIN + ["--set", "train.learning_rate=-1"],
     "error: --set train.learning_rate=-1 is invalid; set it to a positive number"),
    (SUBMIT + ["--env", "1BAD=x", "--", "search"], "error: --env 1BAD: not a variable name; write --env NAME=VALUE"),
    (SUBMIT + ["--", "search"],
     "error: --tracking-uri: required in cluster mode; give the MLflow tracking server's URL (e.g. http://HEAD:5000, "
     "see docs/cluster.md), or allow local tracking on a one-node cluster"),
    (["jobs", "list", "--address", "ftp://head"],
     "error: --address ftp://head: give the head node's dashboard URL, e.g. http://HEAD:8265"),
    (["leaderboard", "--runs", "{tmp}/none.csv"],
     "error: --runs {tmp}/none.csv: no such file; write one with `mixbench export`"),
    (["table", "--tracking-uri", "sqlite:///{tmp}/none.db"],
     "error: no MLflow store at {tmp}/none.db; run `mixbench benchmark` first or pass --tracking-uri (default: "
     "$MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db)"),
]


@pytest.mark.parametrize(("arguments", "line"), RENDERED, ids=[" ".join(row[0])[:60] for row in RENDERED])
def test_the_cli_writes_the_setting_at_fault_as_its_flag(arguments: list[str], line: str, workdir: Path,
                                                        shared_data_dir: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(fill(arguments, workdir, shared_data_dir))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == line.format(tmp=workdir) + "\n"


def test_a_cluster_that_stops_answering_exits_4(workdir: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    def lost(cls, address: str, token_file: Path | None = None) -> JobServer:
        raise ClusterLostError(f"lost contact with the job server at {address}: Connection reset by peer")

    monkeypatch.setattr(JobServer, "connect", classmethod(lost))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["jobs", "list", "--address", "http://head:8265"])
    assert exit_info.value.code == 4
    assert capsys.readouterr().err == ("error: lost contact with the job server at http://head:8265: "
                                       "Connection reset by peer\n")
