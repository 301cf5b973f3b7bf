"""`mixbench table/leaderboard/export`: hostile `--runs` files (NaN, inf, unknown columns, HTML, formulas) and output
paths (a folder, a file for a folder, an unwritable place, an existing file, a symlink out of the folder)."""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import pytest

from tests.cli_runner import mixbench

PAPER_RUNS = Path(__file__).resolve().parents[2] / "results" / "paper" / "runs.csv"


def edited_runs(tmp_path: Path, edit) -> Path:
    """The committed export with `edit(row)` applied to its first finished benchmark run."""
    with PAPER_RUNS.open(newline="") as handle:
        reader = csv.DictReader(handle)
        fields, rows = list(reader.fieldnames), list(reader)
    first = next(row for row in rows if row["tags.mixbench.kind"] == "benchmark" and row["status"] == "FINISHED")
    fields = edit(first) or fields
    path = tmp_path / "runs.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, lineterminator="\n", restval="")
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-0.5"])
def test_non_finite_or_negative_metrics_are_refused(tmp_path, value):
    runs = edited_runs(tmp_path, lambda row: row.update({"metrics.test_mse": value}))
    for command in ("table", "leaderboard"):
        code, out, err = mixbench(command, "--runs", str(runs))
        assert code == 2 and out == "", err
        assert err.startswith("error: --runs") and "test_mse" in err and len(err.splitlines()) == 1


def test_unknown_columns_are_refused(tmp_path):
    def add_column(row):
        row["evil"] = "x"
        with PAPER_RUNS.open(newline="") as handle:
            return [*csv.DictReader(handle).fieldnames, "evil"]

    code, _, err = mixbench("leaderboard", "--runs", str(edited_runs(tmp_path, add_column)))
    assert code == 2 and "unknown column(s) evil" in err


def test_markdown_escapes_html_and_csv_neutralises_formulas(tmp_path):
    hostile = '=HYPERLINK("http://x")<img src=x onerror=alert(1)>'
    runs = edited_runs(tmp_path, lambda row: row.update({"tags.display_name": hostile}))
    code, markdown, err = mixbench("table", "--runs", str(runs), "--format", "markdown")
    assert code == 0, err
    assert "<img" not in markdown and "&lt;img src=x onerror=alert(1)&gt;" in markdown
    for command in (["table", "--format", "csv"], ["leaderboard", "--format", "csv"]):
        code, text, err = mixbench(*command, "--runs", str(runs))
        assert code == 0, err
        cells = [cell for row in csv.reader(io.StringIO(text)) for cell in row]
        assert [cell for cell in cells if "HYPERLINK" in cell]
        assert all(cell.startswith("'=HYPERLINK") for cell in cells if "HYPERLINK" in cell)
        assert not [cell for cell in cells if cell.startswith(("=", "@"))]


def output_case(tmp_path: Path, kind: str) -> tuple[list[str], str]:
    table = ["table", "--runs", str(PAPER_RUNS), "--format", "markdown"]
    if kind == "folder":
        return [*table, "--output", str(tmp_path)], "is a folder"
    if kind == "missing folder":
        return [*table, "--output", str(tmp_path / "no" / "t.md")], "does not exist"
    if kind == "file for folder":
        (tmp_path / "file").write_text("x")
        return [*table, "--output", str(tmp_path / "file" / "t.md")], "is a file, not a folder"
    if kind == "figures file":
        (tmp_path / "figs").write_text("x")
        return [*table, "--figures", str(tmp_path / "figs")], "is a file, not a folder"
    if kind == "existing":
        (tmp_path / "t.md").write_text("keep me")
        return [*table, "--output", str(tmp_path / "t.md")], "exists; pass --force"
    if kind == "unwritable":
        return [*table, "--output", "/proc/x.md"], "not writable"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["folder", "missing folder", "file for folder", "figures file", "existing",
                                  "unwritable"])
def test_bad_output_paths_are_one_line_and_exit_2_before_any_write(tmp_path, kind):
    args, message = output_case(tmp_path, kind)
    code, out, err = mixbench(*args)
    assert code == 2 and out == "", err
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1
    if kind == "existing":
        assert (tmp_path / "t.md").read_text() == "keep me"


def test_force_replaces_atomically_and_never_writes_through_a_symlink(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("not yours")
    target = tmp_path / "out"
    target.mkdir()
    link = target / "t.md"
    link.symlink_to(outside)
    table = ["table", "--runs", str(PAPER_RUNS), "--format", "markdown", "--output", str(link)]
    code, _, err = mixbench(*table)
    assert code == 2 and "is a symlink" in err and outside.read_text() == "not yours"
    code, _, err = mixbench(*table, "--force")
    assert code == 0, err
    assert outside.read_text() == "not yours"  # the link was replaced, its target left alone
    assert not link.is_symlink() and link.read_text().startswith("Long-term forecasting")
    assert [path.name for path in target.iterdir()] == ["t.md"]  # no temporary file left behind
    assert oct(os.stat(link).st_mode & 0o777) == "0o644"
