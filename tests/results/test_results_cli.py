"""End to end through the real CLI: a tiny `mixbench benchmark` on ETTh1 (Ray tasks, real training, real SQLite
MLflow store), then `leaderboard` and `table` checked against the runs read back with MlflowClient.
"""
from __future__ import annotations

import csv
import io
import re
import shutil
import statistics
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest
from matplotlib.image import imread
from mlflow.tracking import MlflowClient

import cli
from tests.cli_runner import mixbench
from benchmarks.data.files import resolve_dataset
from benchmarks.errors import MixbenchError
from benchmarks.grid.runner import BenchmarkConfig, complete_cells, config_entries, plan_cells
from benchmarks.tracking.store import TrackingStore
from results.runs import load_benchmark_records

SUITE = "ci"
EXPERIMENT = "results-test"
TINY_CONFIGS = """\
- model: dlinear
- model: patchtst
  display_name: PatchTST (tiny)
  model_overrides: {d_model: 16, d_ff: 32, n_heads: 2, e_layers: 1}
"""
# Every validation and test window is scored: a capped test would leave the runs out of the tables.
GRID = ["--datasets", "ETTh1", "--models", "dlinear,patchtst", "--seeds", "2", "--epochs", "1",
        "--limit-train-batches", "2", "--cpus-per-run", "1"]
LABELS = {"dlinear": "DLinear", "patchtst": "PatchTST (tiny)"}


@pytest.fixture(scope="module")
def store(tmp_path_factory, shared_data_dir):
    """A real store with one benchmark suite: 2 models x 2 horizons x 2 seeds, plus a horizon that cannot run."""
    root = tmp_path_factory.mktemp("results")
    configs = root / "tiny.yaml"
    configs.write_text(TINY_CONFIGS)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    common = [*GRID, "--configs", str(configs), "--suite", SUITE, "--tracking-uri", uri, "--experiment", EXPERIMENT,
              "--data-dir", str(shared_data_dir)]
    # pred_len 3000 leaves ETTh1's test split without a window: those cells fail inside their Ray task.
    first = mixbench("benchmark", *common, "--horizons", "96,192,3000")
    return {"root": root, "uri": uri, "common": common, "first": first, "configs": configs}


def finished_runs(uri: str) -> list:
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return client.search_runs([experiment.experiment_id], max_results=1000)


def test_every_cell_is_one_tagged_run_and_failures_do_not_stop_the_rest(store):
    code, out, err = store["first"]
    assert code == 1, err
    assert "8 runs logged, 0 skipped as complete, 4 failed" in out
    assert len(re.findall(r"FAILED ETTh1 \w+.* pred_len 3000 seed 202[12]", err)) == 4
    runs = finished_runs(store["uri"])
    assert len(runs) == 8
    for run in runs:
        tags = run.data.tags
        assert run.info.status == "FINISHED" and "test_mse" in run.data.metrics
        assert tags["mixbench.kind"] == "benchmark" and tags["suite"] == SUITE and tags["dataset"] == "ETTh1"
        assert tags.get("display_name") == ("PatchTST (tiny)" if tags["model"] == "patchtst" else None)
        assert run.data.params["train.epochs"] == "1" and run.data.params["train.limit_train_batches"] == "2"
    cells = {(r.data.tags["model"], r.data.tags["pred_len"], r.data.tags["seed"]) for r in runs}
    assert cells == {(m, h, s) for m in ("dlinear", "patchtst") for h in ("96", "192") for s in ("2021", "2022")}
    hashes = defaultdict(set)
    for run in runs:
        hashes[(run.data.tags["model"], run.data.tags["pred_len"])].add(run.data.tags["config_hash"])
    assert all(len(found) == 1 for found in hashes.values())  # seeds share a config
    artifacts = {item.path for item in MlflowClient(tracking_uri=store["uri"]).list_artifacts(runs[0].info.run_id)}
    assert {"config.yaml", "model", "plots"} <= artifacts


def test_rerun_skips_complete_cells(store):
    code, out, err = mixbench("benchmark", *store["common"], "--horizons", "96,192")
    assert code == 0, err
    assert "0 runs logged, 8 skipped as complete, 0 failed" in out
    assert len(finished_runs(store["uri"])) == 8


def expected_summaries(uri: str) -> dict[tuple[str, str], dict[str, float]]:
    """(horizon, label) -> mean/std of test MSE and MAE recomputed from the runs; Avg over both horizons."""
    values = defaultdict(lambda: defaultdict(list))
    for run in finished_runs(uri):
        key = (run.data.tags["pred_len"], LABELS[run.data.tags["model"]])
        values[key]["mse"].append(run.data.metrics["test_mse"])
        values[key]["mae"].append(run.data.metrics["test_mae"])
    expected = {}
    for key, metrics in values.items():
        expected[key] = {f"{m}_mean": statistics.fmean(v) for m, v in metrics.items()}
        expected[key].update({f"{m}_std": statistics.stdev(v) for m, v in metrics.items()})
    for label in LABELS.values():
        expected[("Avg", label)] = {
            name: statistics.fmean([expected[("96", label)][name], expected[("192", label)][name]])
            for name in ("mse_mean", "mse_std", "mae_mean", "mae_std")
        }
    return expected


def test_leaderboard_numbers_match_the_runs(store, tmp_path):
    output = tmp_path / "leaderboard.csv"
    code, _, err = mixbench("leaderboard", "--tracking-uri", store["uri"], "--experiment", EXPERIMENT,
                            "--format", "csv", "--output", str(output))
    assert code == 0, err
    rows = list(csv.DictReader(output.open()))
    expected = expected_summaries(store["uri"])
    assert {(row["horizon"], row["label"]) for row in rows} == set(expected)
    for row in rows:
        want = expected[(row["horizon"], row["label"])]
        for name, value in want.items():
            assert float(row[name]) == pytest.approx(value, rel=1e-12), (row["horizon"], row["label"], name)
        assert row["seeds"] == "2"
    code, out, _ = mixbench("leaderboard", "--tracking-uri", store["uri"], "--experiment", EXPERIMENT)
    assert code == 0 and f"suite: {SUITE}" in out
    dlinear_96 = expected[("96", "DLinear")]
    assert f"{dlinear_96['mse_mean']:.4f} ± {dlinear_96['mse_std']:.4f}" in out


def parse_latex(text: str) -> dict[tuple[str, str, int], tuple[str, str]]:
    """(dataset, horizon, number column) -> (text, mark) from our LaTeX table body."""
    cells = {}
    dataset = None
    for line in text.splitlines():
        if not line.endswith(r"\\") or "&" not in line or line.startswith((r"\multicolumn", "&")):
            continue
        parts = [part.strip() for part in line[:-2].split("&")]
        name = re.match(r"\\multirow\{\d+\}\{\*\}\{(.*)\}", parts[0])
        dataset = name.group(1) if name else dataset
        for index, part in enumerate(parts[2:]):
            mark = "first" if part.startswith(r"\textbf{") else "second" if part.startswith(r"\underline{") else ""
            value = re.sub(r"^\\(textbf|underline)\{(.*)\}$", r"\2", part).replace(r"$\pm$", "±").replace(r"\%", "%")
            cells[(dataset, parts[1], index)] = (value, mark)
    return cells


def parse_markdown(text: str) -> dict[tuple[str, str, int], tuple[str, str]]:
    cells = {}
    for line in text.splitlines()[4:]:
        parts = [part.strip() for part in line.strip("|").split("|")]
        if parts[0] == "1st Count":
            continue
        for index, part in enumerate(parts[2:]):
            mark = "first" if part.startswith("**") else "second" if part.startswith("<u>") else ""
            cells[(parts[0], parts[1], index)] = (re.sub(r"^(\*\*|<u>)(.*?)(\*\*|</u>)$", r"\2", part), mark)
    return cells


def parse_csv(text: str) -> dict[tuple[str, str, int], str]:
    rows = list(csv.reader(io.StringIO(text)))
    return {(row[0], row[1], index): value or "--" for row in rows[1:] if row[0] != "1st Count"
            for index, value in enumerate(row[2:])}


def render(store, output_format: str, *extra: str, reference: bool = False) -> str:
    code, out, err = mixbench("table", "--tracking-uri", store["uri"], "--experiment", EXPERIMENT,
                              "--format", output_format, "--std", *(["--reference", "paper"] if reference else []),
                              *extra)
    assert code == 0, err
    return out


def test_latex_compiles_and_the_pdf_shows_the_numbers(store, tmp_path):
    tex = tmp_path / "table.tex"
    tex.write_text(render(store, "latex", reference=True))
    compiled = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", tex.name], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
    assert compiled.returncode == 0, compiled.stdout[-2000:]
    text = subprocess.run(["pdftotext", "-layout", "table.pdf", "-"], cwd=tmp_path, capture_output=True, text=True,
                          check=True).stdout
    cells = parse_latex(tex.read_text())
    assert len(cells) == 3 * 4  # rows 96, 192, Avg x columns: 2 models x (MSE, MAE)
    papers = re.findall(r"\\footnotesize (\d\.\d{3} \([+-]\d+\.\d\\%\))", tex.read_text())
    assert len(papers) == 3 * 4  # the published number and our difference, in smaller type under each of ours
    for value in [value for value, _ in cells.values()] + [paper.replace("\\%", "%") for paper in papers]:
        assert value in text.replace("−", "-")
    assert "1st Count" in text and "DLinear" in text and "PatchTST (tiny)" in text


def test_bold_and_underline_mark_the_best_and_second_of_each_row(store):
    cells = parse_latex(render(store, "latex"))
    expected = expected_summaries(store["uri"])
    # Display order puts PatchTST before DLinear: columns PatchTST MSE, MAE, DLinear MSE, MAE.
    columns = {(label, metric): 2 * i + j for i, label in enumerate(["PatchTST (tiny)", "DLinear"])
               for j, metric in enumerate(["mse", "mae"])}
    for horizon in ("96", "192", "Avg"):
        for metric in ("mse", "mae"):
            shown = {label: f"{expected[(horizon, label)][f'{metric}_mean']:.3f}" for label in LABELS.values()}
            best, other = sorted(shown, key=lambda label: float(shown[label]))
            marks = {label: cells[("ETTh1", horizon, columns[(label, metric)])][1] for label in shown}
            if shown[best] == shown[other]:
                assert marks == {best: "first", other: "first"}
            else:
                assert marks == {best: "first", other: "second"}


def test_markdown_and_csv_agree_with_latex_cell_by_cell(store):
    latex = parse_latex(render(store, "latex"))
    markdown = parse_markdown(render(store, "markdown"))
    table_csv = parse_csv(render(store, "csv"))
    assert set(latex) == set(markdown) == set(table_csv)
    for key, (value, mark) in latex.items():
        assert markdown[key] == (value, mark), key
        assert table_csv[key] == value, key


def test_relative_difference_to_the_paper(store):
    rows = list(csv.DictReader(io.StringIO(render(store, "csv", reference=True))))
    expected = expected_summaries(store["uri"])
    row_96 = next(row for row in rows if row["horizon"] == "96")
    assert row_96["DLinear paper MSE"] == "0.386"  # published ETTh1 DLinear, horizon 96
    ours = expected[("96", "DLinear")]["mse_mean"]
    assert row_96["DLinear vs paper MSE %"] == f"{(ours - 0.386) / 0.386 * 100:+.1f}%"


def test_figures_are_written_per_dataset(store, tmp_path):
    render(store, "markdown", "--figures", str(tmp_path / "figures"))
    image = imread(tmp_path / "figures" / "ETTh1_mse.png")
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert image[..., :3].std() > 0.05  # not a blank canvas


def test_partially_finished_suite_marks_missing_cells(store, tmp_path):
    partial = tmp_path / "partial.db"
    shutil.copy(store["root"] / "mlflow.db", partial)
    uri = f"sqlite:///{partial}"
    client = MlflowClient(tracking_uri=uri)
    for run in finished_runs(uri):
        if run.data.tags["model"] == "patchtst" and run.data.tags["pred_len"] == "192":
            client.set_terminated(run.info.run_id, status="FAILED")
    code, out, err = mixbench("table", "--tracking-uri", uri, "--experiment", EXPERIMENT, "--format", "markdown")
    assert code == 0, err
    cells = parse_markdown(out)
    assert cells[("ETTh1", "192", 0)] == ("--", "") and cells[("ETTh1", "Avg", 1)] == ("--", "")
    assert cells[("ETTh1", "192", 2)] == (cells[("ETTh1", "192", 2)][0], "first")
    config = BenchmarkConfig(datasets=["ETTh1"], models=["dlinear", "patchtst"], horizons=[96, 192], seeds=2,
                             configs=str(store["configs"]), suite=SUITE, epochs=1, limit_train_batches=2,
                             experiment=EXPERIMENT)
    tracking = TrackingStore.resolve(uri)
    cells = plan_cells(config, config_entries(config, tracking), {"ETTh1": resolve_dataset("ETTh1")})
    done = complete_cells(tracking, EXPERIMENT, SUITE)
    assert sorted((c.experiment.model, c.experiment.pred_len) for c in cells if c.key not in done) == [
        ("patchtst", 192)] * 2


@pytest.mark.parametrize("args, message", [
    (["--suite", "nope"], "unknown suite 'nope'; --suite must be one of: ci"),
    (["--dataset", "weather"], "dataset 'weather' has no finished runs in suite 'ci'"),
])
def test_unknown_suite_or_dataset_is_a_clear_error(store, args, message):
    for command in ("leaderboard", "table"):
        code, _, err = mixbench(command, "--tracking-uri", store["uri"], "--experiment", EXPERIMENT, *args)
        assert code == 2 and message in err and err.startswith("error: ")


def test_empty_store_is_a_clear_error(store, tmp_path):
    code, _, err = mixbench("table", "--tracking-uri", f"sqlite:///{tmp_path / 'missing.db'}")
    assert code == 2 and f"no MLflow store at {tmp_path / 'missing.db'}" in err
    assert not (tmp_path / "missing.db").exists()
    code, _, err = mixbench("leaderboard", "--tracking-uri", store["uri"], "--experiment", "empty")
    assert code == 2
    assert "no finished benchmark runs in experiment 'empty'" in err and "run `mixbench benchmark` first" in err


def test_bad_benchmark_input_fails_before_any_training(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code, _, err = mixbench("benchmark", "--datasets", "ETTh1", "--models", "dlinear,lstm", "--tracking-uri", uri)
    assert code == 2 and "unknown model 'lstm'" in err
    code, _, err = mixbench("benchmark", "--datasets", "nowhere", "--tracking-uri", uri)
    assert code == 2 and "unknown dataset 'nowhere'" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("- model: dlinear\n  model_overides: {}\n")
    code, _, err = mixbench("benchmark", "--datasets", "ETTh1", "--configs", str(bad), "--tracking-uri", uri)
    assert code == 2 and "unknown key 'model_overides'" in err
    code, _, err = mixbench("benchmark", "--datasets", "ETTh1", "--address", "127.0.0.1:1", "--tracking-uri", uri)
    assert code == 2 and "--address 127.0.0.1:1: nothing answers there" in err


def test_the_cli_registers_the_results_commands():
    for name in ("leaderboard", "table", "export"):
        assert cli.COMMANDS[name][0] == f"results.commands:{name}"
    assert cli.COMMANDS["benchmark"][0] == "benchmarks.grid.command:benchmark"


def log_search(client, experiment_id: str, start: int, pred_len: int, status: str, folder: Path,
               best_yaml: str | None = None, params: dict[str, str] | None = None) -> None:
    """A search parent run as `mixbench search` leaves it: tags, best.* params, best_config.yaml at the root."""
    run = client.create_run(experiment_id, start_time=start, tags={
        "mixbench.kind": "search", "dataset": "ETTh1", "model": "patchtst", "pred_len": str(pred_len)})
    for key, value in (params or {}).items():
        client.log_param(run.info.run_id, key, value)
    if best_yaml is not None:
        path = folder / f"{start}" / "best_config.yaml"
        path.parent.mkdir(parents=True)
        path.write_text(best_yaml)
        client.log_artifact(run.info.run_id, str(path))
    client.set_terminated(run.info.run_id, status=status)


def test_best_configs_come_from_the_latest_finished_search(store, tmp_path):
    client = MlflowClient(tracking_uri=store["uri"])
    experiment_id = client.create_experiment("searches", artifact_location=(tmp_path / "artifacts").as_uri())
    best = "# best of search\nmodel: patchtst\ndataset: ETTh1\npred_len: 96\nseq_len: 96\n" \
           "model_overrides: {{d_model: {}, n_heads: 2}}\ntrain_overrides: {{learning_rate: 0.001}}\n"
    log_search(client, experiment_id, 1_000, 96, "FINISHED", tmp_path, best.format(8))
    log_search(client, experiment_id, 2_000, 96, "FINISHED", tmp_path, best.format(16))
    log_search(client, experiment_id, 3_000, 96, "FAILED", tmp_path, best.format(64))
    log_search(client, experiment_id, 4_000, 192, "FINISHED", tmp_path,
               params={"best.model.d_model": "32", "best.train.learning_rate": "0.0005", "best.seq_len": "96"})
    config = BenchmarkConfig(datasets=["ETTh1"], models=["patchtst"], horizons=[96, 192], configs="best",
                             experiment="searches")
    entries = {entry.pred_len: entry for entry in config_entries(config, TrackingStore.resolve(store["uri"]))}
    assert entries[96].model_overrides == {"d_model": 16, "n_heads": 2}
    assert entries[96].train_overrides == {"learning_rate": 0.001}
    assert entries[192].model_overrides == {"d_model": 32} and entries[192].train_overrides == {"learning_rate": 0.0005}
    assert {entry.display_name for entry in entries.values()} == {"PatchTST (searched)"}
    with pytest.raises(MixbenchError, match="no finished search for patchtst on ETTh1 at pred_len 336"):
        config_entries(BenchmarkConfig(datasets=["ETTh1"], models=["patchtst"], horizons=[336], configs="best",
                                       experiment="searches"), TrackingStore.resolve(store["uri"]))


def test_default_suite_is_the_latest_and_only_complete_runs_count(store, tmp_path):
    client = MlflowClient(tracking_uri=store["uri"])
    experiment_id = client.create_experiment("suites", artifact_location=(tmp_path / "artifacts").as_uri())

    def benchmark_run(suite: str, start: int, seed: int, status: str = "FINISHED", test: bool = True) -> None:
        run = client.create_run(experiment_id, start_time=start, tags={
            "mixbench.kind": "benchmark", "suite": suite, "dataset": "ETTh1", "model": "dlinear", "pred_len": "96",
            "seed": str(seed), "config_hash": "abc"})
        metrics = {"best_val_loss": 0.5, **({"test_mse": 0.4 + seed, "test_mae": 0.3} if test else {})}
        for name, value in metrics.items():
            client.log_metric(run.info.run_id, name, value)
        if status != "RUNNING":
            client.set_terminated(run.info.run_id, status=status)

    benchmark_run("old", 1_000, 0)
    benchmark_run("new", 2_000, 1)
    benchmark_run("new", 2_001, 2, status="RUNNING")
    benchmark_run("new", 2_002, 3, test=False)
    benchmark_run("new", 2_003, 4, status="FAILED")
    tracking = TrackingStore.resolve(store["uri"])
    suite, records = load_benchmark_records(tracking, "suites")
    assert suite == "new" and [record.seed for record in records] == [1]
    suite, records = load_benchmark_records(tracking, "suites", suite="old")
    assert [record.test_mse for record in records] == [0.4]


def with_searches(store, folder: Path) -> str:
    """A copy of the store plus a FAILED benchmark run of the suite, a search (with one trial) on a suite cell and
    one on a cell outside the suite."""
    shutil.copy(store["root"] / "mlflow.db", folder / "mlflow.db")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    failed = client.create_run(experiment_id, tags={
        "mixbench.kind": "benchmark", "suite": SUITE, "dataset": "ETTh1", "model": "dlinear", "pred_len": "96",
        "seed": "2023", "config_hash": "x"})
    client.log_metric(failed.info.run_id, "test_mse", 9.0)
    client.set_terminated(failed.info.run_id, status="FAILED")
    for pred_len in (96, 720):
        search = client.create_run(experiment_id, tags={
            "mixbench.kind": "search", "dataset": "ETTh1", "model": "patchtst", "pred_len": str(pred_len)})
        trial = client.create_run(experiment_id, tags={
            "mixbench.kind": "trial", "mlflow.parentRunId": search.info.run_id, "dataset": "ETTh1",
            "model": "patchtst", "pred_len": str(pred_len), "trial_id": f"t{pred_len}"})
        client.log_metric(trial.info.run_id, "val_loss", 0.5)
        client.log_param(trial.info.run_id, "model.d_model", "16")
        for run in (trial, search):
            client.set_terminated(run.info.run_id)
    return uri


def test_export_holds_every_run_and_rebuilds_the_same_tables(store, tmp_path):
    uri = with_searches(store, tmp_path)
    output = tmp_path / "runs.csv"
    code, _, err = mixbench("export", "--suite", SUITE, "--output", str(output), "--tracking-uri", uri,
                            "--experiment", EXPERIMENT)
    assert code == 0, err
    assert "11 runs: 9 benchmark, 1 search, 1 trial" in err
    rows = list(csv.DictReader(output.open()))
    kinds = [row["tags.mixbench.kind"] for row in rows]
    assert kinds == ["benchmark"] * 9 + ["search", "trial"]  # sorted by kind
    statuses = [row["status"] for row in rows[:9]]
    assert statuses.count("FINISHED") == 8 and statuses.count("FAILED") == 1
    assert rows[10]["parent_run_id"] == rows[9]["run_id"] and rows[10]["tags.pred_len"] == "96"
    assert rows[10]["metrics.val_loss"] == "0.5" and rows[10]["params.model.d_model"] == "16"
    assert not [name for name in rows[0] if name.startswith("tags.mlflow.")]
    for command in (["table", "--format", "csv", "--reference", "paper", "--std"], ["leaderboard", "--format", "csv"]):
        from_store = mixbench(*command, "--tracking-uri", uri, "--experiment", EXPERIMENT)
        from_export = mixbench(*command, "--runs", str(output))
        assert from_store[0] == from_export[0] == 0, from_export[2]
        assert from_export[1] == from_store[1] and from_store[1].count("\n") > 3


def test_bad_exports_are_one_line_errors(store, tmp_path):
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("dataset,model\nETTh1,dlinear\n")
    cases = [
        (["table", "--runs", str(tmp_path / "missing.csv")], "no such file"),
        (["leaderboard", "--runs", str(wrong)], "is not a `mixbench export` CSV"),
        (["export", "--suite", "nope", "--output", str(tmp_path / "x.csv"), "--tracking-uri", store["uri"],
          "--experiment", EXPERIMENT], f"--suite must be one of: {SUITE}"),
        (["export", "--suite", SUITE, "--output", str(tmp_path / "no" / "x.csv"), "--tracking-uri", store["uri"]],
         "does not exist"),
    ]
    for args, message in cases:
        code, _, err = mixbench(*args)
        assert code == 2, (args, err)
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and message in err, err


def test_fused_seeds_log_the_same_runs_as_seeds_trained_apart(tmp_path, shared_data_dir):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    grid = ["--datasets", "ETTh1", "--models", "dlinear", "--horizons", "96", "--seeds", "3", "--epochs", "1",
            "--limit-train-batches", "2", "--tracking-uri", uri, "--experiment", EXPERIMENT, "--data-dir",
            str(shared_data_dir)]
    code, out, err = mixbench("benchmark", *grid, "--fuse", "--suite", "fused")
    assert code == 0, err
    assert "the seeds of a cell train as one fused array (1 arrays)" in err
    assert "3 runs logged" in out
    code, out, err = mixbench("benchmark", *grid, "--no-fuse", "--suite", "apart")
    assert code == 0, err
    runs = finished_runs(uri)
    by_suite = defaultdict(dict)
    for run in runs:
        assert run.info.status == "FINISHED" and run.data.tags["test_complete"] == "true"
        by_suite[run.data.tags["suite"]][run.data.tags["seed"]] = run.data.metrics["test_mse"]
    assert set(by_suite["fused"]) == set(by_suite["apart"]) == {"2021", "2022", "2023"}
    for seed, mse in by_suite["fused"].items():
        assert mse == pytest.approx(by_suite["apart"][seed], rel=1e-5)
    assert len(set(by_suite["fused"].values())) == 3  # each seed its own run


def test_export_from_a_missing_store_is_one_line_and_creates_nothing(tmp_path):
    missing = tmp_path / "reproduce" / "mlflow.db"
    code, out, err = mixbench("export", "--suite", "paper", "--tracking-uri", f"sqlite:///{missing}",
                              "--output", str(tmp_path / "runs.csv"))
    assert code == 2, err
    assert f"no MLflow store at {missing}" in err and "--tracking-uri" in err
    assert not missing.exists() and not missing.parent.exists() and not (tmp_path / "runs.csv").exists()
