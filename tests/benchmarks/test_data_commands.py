"""`mixbench data list / download / info` through the real CLI entry points, and the shared --data-dir option."""
from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import click
import pandas as pd
import pytest
from click.testing import CliRunner

import cli
from benchmarks.data.command import data_dir_option
from benchmarks.data.files import resolve_dataset

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MIXBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MIXBENCH_DATA_DIR", raising=False)
    return tmp_path / "cache"


def run_main(args: list[str], capsys) -> tuple[int, str, str]:
    """Run `cli.main` as the `mixbench` script does: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args)
        raise SystemExit(0)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_info_weather_prints_the_tslib_window_counts(shared_data_dir):
    result = CliRunner().invoke(cli.cli, ["data", "info", "weather", "--seq-len", "96", "--pred-len", "96",
                                          "--data-dir", str(shared_data_dir)])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line.split() for line in result.output.splitlines() if line.strip()}
    assert lines["train"][1:3] == ["36,887", "36,696"]
    assert lines["val"][1:3] == ["5,366", "5,175"]
    assert lines["test"][1:3] == ["10,635", "10,444"]
    assert "(verified)" in result.output
    assert "21 in, 21 out, 4 time features" in result.output


def test_info_as_a_real_subprocess(shared_data_dir, tmp_path):
    environment = {**os.environ, "MIXBENCH_CACHE_DIR": str(tmp_path / "cache"),
                   "MIXBENCH_DATA_DIR": str(shared_data_dir)}
    result = subprocess.run([sys.executable, "-m", "cli", "data", "info", "ETTh1", "--seq-len", "96", "--pred-len",
                             "96", "--features", "ms"], cwd=REPO_ROOT, env=environment, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "features MS" in result.stdout and "7 in, 1 out" in result.stdout
    assert [line.split()[2] for line in result.stdout.splitlines() if line.split()[0] in ("train", "val", "test")] \
        == ["8,449", "2,785", "2,785"]


def test_list_shows_presence_and_verification(shared_data_dir, tmp_path, capsys):
    code, out, _ = run_main(["data", "list", "--data-dir", str(shared_data_dir)], capsys)
    assert code == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert set(rows) == {"weather", "ETTh1", "ETTh2", "ETTm1", "ETTm2", "electricity", "traffic", "exchange_rate",
                         "illness"}
    assert rows["weather"][:4] == ["weather", "21", "52,696", "10min"]
    assert rows["weather"][-2:] == ["yes", "yes"]
    assert rows["ETTh1"][-2:] == ["yes", "yes"]
    assert rows["traffic"][-2:] == ["no", "-"]
    # a modified copy of a known-hash file is flagged; a file without reference hash is reported as such
    (tmp_path / "ETT-small").mkdir()
    (tmp_path / "ETT-small" / "ETTh1.csv").write_text("date,OT\n2016-07-01,1\n")
    (tmp_path / "illness").mkdir()
    (tmp_path / "illness" / "national_illness.csv").write_text("date,OT\n2002-01-01,1\n")
    code, out, _ = run_main(["data", "list", "--data-dir", str(tmp_path)], capsys)
    assert code == 0
    assert "NO: sha256 differs" in next(line for line in out.splitlines() if line.startswith("ETTh1"))
    assert "no reference hash" in next(line for line in out.splitlines() if line.startswith("illness"))


def test_data_dir_comes_from_the_environment(shared_data_dir, monkeypatch, capsys):
    monkeypatch.setenv("MIXBENCH_DATA_DIR", str(shared_data_dir))
    code, out, _ = run_main(["data", "list"], capsys)
    assert code == 0
    assert f"data dir: {shared_data_dir}" in out


def test_download_of_a_present_verified_file_does_nothing(shared_data_dir, capsys):
    code, out, _ = run_main(["data", "download", "etth1", "--data-dir", str(shared_data_dir)], capsys)
    assert code == 0
    assert f"ETTh1: already at {shared_data_dir / 'ETT-small' / 'ETTh1.csv'}" in out


def test_download_refuses_to_keep_a_modified_copy_silently(tmp_path, capsys):
    (tmp_path / "weather").mkdir()
    (tmp_path / "weather" / "weather.csv").write_text("date,OT\n2020-01-01,1\n")
    code, _, err = run_main(["data", "download", "weather", "--data-dir", str(tmp_path)], capsys)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "34ee981d07313e51da2a50bb600072c8ae4a69cb4b0651f4cb93a069d7a2ba63" in err and "--force" in err


@pytest.mark.parametrize("args, fragment", [
    (["data", "info", "wether"], "'wether'; did you mean 'weather'?"),
    (["data", "info", "weather", "--seq-len", "0"], "error: --seq-len must be a positive integer, got 0"),
    (["data", "info", "weather", "--pred-len", "-1"], "error: --pred-len must be a positive integer, got -1"),
    (["data", "info", "illness", "--no-verify", "--features", "S", "--target", "nope"],
     "error: --target 'nope' is not a column"),
    (["data", "info", "illness", "--no-verify", "--seq-len", "8", "--pred-len", "12"],
     "error: illness: the train split has 19 rows, fewer than seq_len + --pred-len = 20"),
    (["data", "info", "ETTh1"], "ETTh1.csv is missing; run `mixbench data download ETTh1`, place ETTh1.csv there, "
                                "or point --data-dir at a folder that holds it"),
    (["data", "download", "electricty"], "'electricty'; did you mean 'electricity'?"),
])
def test_bad_input_is_one_line_on_stderr_and_exit_2(tmp_path, capsys, monkeypatch, args, fragment):
    monkeypatch.setattr("benchmarks.data.command.resolve_dataset", functools.partial(resolve_dataset, download=False))
    (tmp_path / "illness").mkdir()
    lines = ["date,a,OT"] + [f"2002-01-{day:02d},{day},{day}" for day in range(1, 29)]
    (tmp_path / "illness" / "national_illness.csv").write_text("\n".join(lines) + "\n")
    code, _, err = run_main([*args, "--data-dir", str(tmp_path)], capsys)
    assert code == 2
    assert err.startswith("error: ") and fragment in err, err
    assert err.count("\n") == 1


def test_info_on_a_modified_copy_needs_no_verify(tmp_path, capsys):
    (tmp_path / "ETT-small").mkdir()
    lines = ["date,HUFL,OT"] + [f"{day} {hour:02d}:00:00,{hour},1" for day in pd.date_range("2016-07-01", periods=600)
                                for hour in range(24)]
    (tmp_path / "ETT-small" / "ETTh1.csv").write_text("\n".join(lines) + "\n")
    code, _, err = run_main(["data", "info", "ETTh1", "--data-dir", str(tmp_path)], capsys)
    assert code == 2 and "should have f18de3ad" in err and "mixbench data download ETTh1 --force" in err
    assert "--verify off" in err
    code, out, _ = run_main(["data", "info", "ETTh1", "--no-verify", "--data-dir", str(tmp_path)], capsys)
    assert code == 0 and "(DIFFERS from the registry)" in out and "2 in, 2 out" in out


@pytest.mark.parametrize("command", [["data"], ["data", "list"], ["data", "download"], ["data", "info"]])
def test_every_help_has_an_example(command):
    result = CliRunner().invoke(cli.cli, [*command, "--help"])
    assert result.exit_code == 0
    assert "Example:" in result.output and "mixbench data" in result.output


def test_data_dir_option_is_reusable_by_other_commands(tmp_path):
    @click.command()
    @data_dir_option
    def show(data_dir):
        click.echo(repr(data_dir))

    assert CliRunner().invoke(show, ["--data-dir", str(tmp_path)]).output.strip() == repr(tmp_path)
    assert CliRunner().invoke(show, []).output.strip() == "None"
    assert "MIXBENCH_DATA_DIR" in CliRunner().invoke(show, ["--help"]).output
