"""CPU smoke tests of the training-speed benchmarks' own code paths (benchmarks.speed) and of the engine's training
step they time: floors, step timing, compile counts across train / eval / partial batches, packed trials, search
summaries and the JSON report. Tiny shapes and few batches; no timing is asserted."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks.data.files import resolve_dataset
from benchmarks.experiment import resolve_experiment
from benchmarks.models.registry import build_model
from benchmarks.speed import cases, engine_runs, floors, packing, perf, searches, step
from benchmarks.training.engine import run_experiment
from benchmarks.training.step import TrainStep, make_optimizer

CPU = torch.device("cpu")
TINY_MIXMAMBA = cases.BenchConfig("mixmamba", {"model.d_model": 8, "model.scan_backend": "reference",
                                               "train.batch_size": 8})


@pytest.fixture(scope="module")
def weather(shared_data_dir):
    return cases.load_bench_data(resolve_dataset("weather", shared_data_dir), CPU)


def test_dlinear_floor_counts_its_two_linear_maps_forward_and_their_weight_gradients(weather):
    channels = weather.windows.n_channels
    model, _ = build_model("dlinear", 96, 96, channels)
    batch = next(weather.windows.train.iter_batches(32))
    floor = floors.step_floor(model, batch, resolve_experiment("dlinear", weather.file, pred_len=96).train, False)
    forward = 2 * (2 * 32 * channels * 96 * 96)  # seasonal and trend maps, 96 -> 96 steps per channel
    # The input needs no gradient, so backward computes only the weight gradients: as many FLOPs as forward.
    assert floor["flops"] == 2 * forward
    assert floor["parameters"] == sum(p.numel() for p in model.parameters())
    assert floor["bytes"] >= 32 * floor["parameters"] + 2 * floor["saved_activation_bytes"]
    assert all(p.grad is None for p in model.parameters())


def test_a_training_step_costs_at_most_three_forwards_of_flops_with_depthwise_convolutions(weather):
    experiment, model = cases.build_case(TINY_MIXMAMBA, None, weather.file, CPU)
    assert experiment.model_config.d_model == 8 and experiment.train.batch_size == 8
    batch = next(weather.windows.train.iter_batches(8))
    floor = floors.step_floor(model, batch, experiment.train, False)
    with torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
        model(batch.x, batch.x_mark)
    assert counter.get_total_flops() < floor["flops"] <= 3 * counter.get_total_flops()


def test_floor_time_is_the_larger_of_compute_and_memory_at_the_measured_rates():
    ceilings = {"copy_tb_s": 4.0, "matmul_tflops_fp32": 50.0, "matmul_tflops_bf16": 800.0}
    floor = {"flops": 1e11, "bytes": 4e9}
    fp32, bf16 = floors.floor_ms(floor, ceilings, False), floors.floor_ms(floor, ceilings, True)
    assert fp32 == {"compute_ms": pytest.approx(2.0), "memory_ms": pytest.approx(1.0), "floor_ms": pytest.approx(2.0)}
    assert bf16["floor_ms"] == pytest.approx(1.0) and bf16["compute_ms"] == pytest.approx(0.125)
    assert floors.floor_ms(floor, {}, False) is None


def test_configs_are_reported_with_their_model_and_train_overrides():
    assert cases.CONFIGS["mixmamba-moe16"].describe() == {
        "model": "mixmamba", "model_overrides": {"d_model": 256, "num_experts": 16, "top_k": 5},
        "train_overrides": {"batch_size": 16, "learning_rate": 1e-3},
        "source": "official Exchange script: d_model 256, 16 experts, top-5, batch 16"}


@pytest.mark.slow  # torch.compile of a training and an evaluation graph
def test_compiled_variant_builds_one_graph_for_training_and_one_for_evaluation_and_none_in_the_epoch(
        shared_data_dir):
    etth1 = cases.load_bench_data(resolve_dataset("ETTh1", shared_data_dir), CPU)
    settings = step.TimingSettings(steps=3, warmup=4, limit_batches=None, max_epoch_seconds=600)
    row = step.measure_variant("dlinear", "compile-graph", None, etth1, CPU, settings, {})
    # Dynamo may split a model into several graphs, but each pass compiles once: the last, partial training and
    # validation batches run uncompiled instead of recompiling.
    assert etth1.windows.train.num_windows % 32 and etth1.windows.val.num_windows % 32
    assert row["compiled_graphs"]["train"] >= 1 and row["compiled_graphs"]["eval"] >= 1
    assert row["compiled_graphs"]["timed_epoch"] == 0
    assert row["epoch_measured"] and row["epoch_seconds"] >= row["train_seconds"] > 0
    assert row["steps_timed"] == 3 and row["ms_p10"] <= row["ms_per_step"] <= row["ms_p90"]
    assert row["host_sync_free"] is None and row["graphed"] is False  # nothing to check or capture on the CPU
    assert row["epoch_train_loss"] > 0 and row["val_mse"] > 0


def test_an_eager_mixmamba_row_with_a_capped_epoch_reports_its_steps_and_skips_nothing(weather):
    settings = step.TimingSettings(steps=2, warmup=4, limit_batches=2)
    row = step.measure_variant("tiny", "eager", "reference", weather, CPU, settings, {}, config=TINY_MIXMAMBA)
    assert (row["config"], row["backend"], row["batch_size"]) == ("tiny", "reference", 8)
    assert row["compiled_graphs"] == {"train": 0, "eval": 0, "timed_epoch": 0}
    assert row["epoch_measured"] and row["val_mse"] > 0 and row["steps_timed"] == 2


def test_the_engine_step_runs_a_partial_batch_through_the_uncompiled_model(weather):
    model, _ = build_model("dlinear", 96, 96, weather.windows.n_channels)
    train = resolve_experiment("dlinear", weather.file, pred_len=96).train
    calls = []

    def forward(x, x_mark):  # stands in for a compiled model: it records the batch sizes it is given
        calls.append(x.shape[0])
        return model(x, x_mark)

    train_step = TrainStep(model, make_optimizer(model, train, CPU), "mse", slice(None), 32, forward=forward)
    before = [p.detach().clone() for p in model.parameters()]
    full, partial = weather.windows.train.batch(torch.arange(32)), weather.windows.train.batch(torch.arange(5))
    for batch in (full, partial, full):
        loss = train_step(batch)
        assert loss.dim() == 0 and not loss.requires_grad and torch.isfinite(loss)
    assert calls == [32, 32]
    assert all(not torch.equal(old, new) for old, new in zip(before, model.parameters()))


@pytest.mark.slow  # torch.compile over two epochs
def test_run_experiment_with_compile_compiles_once_per_pass_over_two_epochs(shared_data_dir, tmp_path):
    torch._dynamo.reset()
    counter = step.CompileCounter()
    experiment = resolve_experiment("dlinear", resolve_dataset("ETTh1", shared_data_dir), pred_len=24, seq_len=48,
                                    device="cpu", settings={"train.epochs": 2, "train.batch_size": 64,
                                                            "train.compile": True, "train.limit_eval_batches": 3})
    result = run_experiment(experiment, artifact_dir=tmp_path)
    assert result.epochs_run == 2 and all(row["train_loss"] > 0 for row in result.history)
    # DLinear is one graph: one for training, one for validation; epoch 2, the partial batches and the test pass
    # (the uncompiled model) add none.
    assert counter.take() == 2


def test_bf16_accuracy_compares_the_same_recipe_in_both_precisions(weather):
    outcome = engine_runs.bf16_accuracy("dlinear", weather.file, CPU, epochs=1, limit_batches=2)
    fp32, bf16 = outcome["runs"]["fp32"], outcome["runs"]["bf16"]
    assert fp32["train"]["bf16"] is False and bf16["train"]["bf16"] is True
    assert fp32["train"]["epochs"] == 1 and fp32["train"]["limit_train_batches"] == 2
    assert outcome["bf16_vs_fp32"] == pytest.approx(bf16["test_mse"] / fp32["test_mse"] - 1)
    assert fp32["test_mse"] != bf16["test_mse"]


@pytest.mark.slow  # starts packed trial processes
def test_packed_trials_run_as_k_processes_and_count_trials_per_hour(shared_data_dir):
    entry = packing.pack_trials(2, str(shared_data_dir), CPU, epochs=1, limit_batches=1, config_name="dlinear")
    assert entry["k"] == 2 and entry["memory_fraction"] == 0.5
    assert entry["trials_per_hour"] == pytest.approx(2 * 3600 / entry["wall_seconds"])
    assert len(entry["worker_epoch_seconds"]) == 2 and all(len(epochs) == 1 for epochs in entry["worker_epoch_seconds"])
    assert entry["test_mse"][0] == entry["test_mse"][1]  # same seed, same data: the same trial twice


def test_a_packed_trial_request_that_names_no_config_is_refused(tmp_path, capsys):
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"config": "mamba", "device": "cpu", "epochs": 1}))
    with pytest.raises(SystemExit):
        packing.main([str(request), str(tmp_path / "result.json")])
    assert "'mamba' is unknown" in capsys.readouterr().err


def test_peak_concurrency_counts_overlapping_trials_only():
    assert searches.peak_concurrency([(0, 10), (2, 5), (4, 12), (10, 11)]) == 3
    assert searches.peak_concurrency([(0, 1), (1, 2), (2, 3)]) == 1
    # Whole-second timestamps: trials that ran back to back may seem to share up to a second.
    assert searches.peak_concurrency([(0, 10), (9.5, 20), (19, 30)], resolution=1.0) == 1
    assert searches.peak_concurrency([(0, 10), (8, 20)], resolution=1.0) == 2


def _write_trials(folder: Path) -> None:
    def write(name, reports):
        (folder / name).mkdir(parents=True)
        (folder / name / "result.json").write_text("".join(json.dumps(report) + "\n" for report in reports))

    write("trial_a", [{"timestamp": 100, "time_this_iter_s": 5.0, "epoch_seconds": 2.0},
                      {"timestamp": 104, "time_this_iter_s": 4.0, "epoch_seconds": 3.0, "test_mse": 0.2}])
    write("trial_b", [{"timestamp": 102, "time_this_iter_s": 3.0, "epoch_seconds": 2.5}])
    write("trial_c", [{"timestamp": 110, "time_this_iter_s": 2.0, "epoch_seconds": 1.0}])


def test_search_summary_counts_trials_from_the_outcome_and_epochs_from_tune_results(tmp_path):
    _write_trials(tmp_path)
    counts = {"finished": 1, "stopped": 2, "failed": 0, "running": 0, "pending": 0}
    summary = searches.summarize_search(tmp_path, counts, wall=36.0)
    assert summary["trials_reporting"] == 3 and summary["trials_finished"] == 1
    assert summary["trials_stopped_early"] == 2 and summary["trials_per_hour"] == pytest.approx(300.0)
    assert summary["peak_concurrent_trials"] == 2
    assert summary["epochs_reported"] == 4 and summary["median_epoch_seconds"] == pytest.approx(2.25)


def test_main_writes_the_report_with_environment_rows_and_targets(shared_data_dir, tmp_path):
    out = tmp_path / "perf.json"
    report = perf.main(["--device", "cpu", "--data-dir", str(shared_data_dir), "--models", "dlinear",
                        "--variants", "eager,graph", "--parts", "rows,engine", "--steps", "2",
                        "--warmup", "4", "--limit-batches", "2", "--out", str(out)])
    written = json.loads(out.read_text())
    assert written["environment"]["device_type"] == "cpu" and written["environment"]["torch"] == torch.__version__
    assert [(row["config"], row["variant"]) for row in written["rows"]] == [("dlinear", "graph"), ("dlinear", "eager")]
    assert [run["config"] for run in written["engine_runs"]] == [] and written["errors"] == []
    assert written["configs"]["dlinear"] == {"model": "dlinear", "model_overrides": {}, "train_overrides": {},
                                             "source": "TSLib run.py defaults"}
    assert {check["target"] for check in written["targets"]} == {check["target"] for check in report["targets"]}
    assert all(check["met"] is None for check in written["targets"])  # nothing the targets need was measured


def test_the_engine_part_runs_mixmamba_small_through_run_experiment(monkeypatch, shared_data_dir, tmp_path):
    monkeypatch.setitem(cases.CONFIGS, "mixmamba-small", TINY_MIXMAMBA)  # a tiny stand-in: the same code path, fast
    report = perf.main(["--device", "cpu", "--data-dir", str(shared_data_dir), "--models", "mixmamba-small",
                        "--backends", "reference", "--parts", "engine", "--limit-batches", "1",
                        "--out", str(tmp_path / "perf.json")])
    assert report["errors"] == [] and [run["config"] for run in report["engine_runs"]] == ["mixmamba-small"]
    run = report["engine_runs"][0]
    assert run["train"]["epochs"] == 2 and len(run["epoch_seconds"]) == 2 and run["test_mse"] > 0


def test_a_profile_lists_the_heaviest_operations_of_a_step(weather):
    profile = step.profile_step("dlinear", "eager", None, weather, CPU, steps=2)
    assert profile["steps"] == 2 and profile["launches_per_step"] > 0 and 0 < len(profile["top"]) <= 15
    times = [top["ms_per_step"] for top in profile["top"]]
    assert times == sorted(times, reverse=True) and sum(times) <= profile["ms_per_step"] + 1e-9


def test_rows_run_as_listed_and_targets_take_the_best_row(shared_data_dir, tmp_path):
    report = perf.main(["--device", "cpu", "--data-dir", str(shared_data_dir), "--models", "dlinear,patchtst",
                        "--parts", "rows", "--rows", "dlinear:eager,dlinear:graph", "--steps", "2", "--warmup", "4",
                        "--limit-batches", "1", "--out", str(tmp_path / "perf.json")])
    assert [row["variant"] for row in report["rows"]] == ["eager", "graph"]
    report["rows"] += [{"config": "patchtst", "variant": name, "backend": "-", "bf16": False, "epoch_seconds": s}
                       for name, s in (("graph", 4.0), ("graph-bf16", 2.5))]
    checks = {check["target"]: check for check in perf.target_checks(report)}
    assert checks["patchtst epoch <= 3 s (graph-bf16)"] == {"target": "patchtst epoch <= 3 s (graph-bf16)",
                                                            "achieved": 2.5, "met": True}


def test_bad_arguments_name_the_flag(capsys):
    for argv, flag in ((["--models", "mamba"], "--models"), (["--warmup", "2"], "--warmup"),
                       (["--variants", "fast"], "--variants"), (["--parts", "all"], "--parts"),
                       (["--rows", "dlinear"], "--rows")):
        with pytest.raises(SystemExit):
            perf.parse_args(argv)
        assert flag in capsys.readouterr().err
