"""The training engine on real ETTh1: determinism, early stopping and best-weight restore, schedules, resume,
test metrics over every window, saved weights, artifacts, divergence and GPU out-of-memory errors. Tiny models, few
batches."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, load_model

from benchmarks.data.files import resolve_dataset
from benchmarks.data.protocol import DataProtocol, load_forecast_data
from benchmarks.errors import SettingError
from benchmarks.experiment import Experiment, resolve_experiment
from benchmarks.models.registry import recipe
from benchmarks.training.callbacks import TrainingCallback
from benchmarks.training.config import TrainConfig
from benchmarks.training.engine import GpuOutOfMemoryError, NonFiniteLossError, run_experiment, scheduled_learning_rate
from benchmarks.training.evaluation import evaluate

TINY_MODELS = {
    "dlinear": {},
    "patchtst": {"d_model": 16, "n_heads": 2, "e_layers": 1, "d_ff": 32},
    "mixmamba": {"d_model": 8, "d_state": 8},
}


def tiny_spec(data_dir, model="dlinear", seed=2021, features="M", **train) -> Experiment:
    settings = {"epochs": 2, "batch_size": 16, "limit_train_batches": 3, "limit_eval_batches": 2, **train}
    return resolve_experiment(
        model, resolve_dataset("ETTh1", data_dir), pred_len=24, seq_len=48, features=features, seed=seed,
        device="cpu", settings={**{f"model.{key}": value for key, value in TINY_MODELS[model].items()},
                                **{f"train.{key}": value for key, value in settings.items()}})


def fresh_model(result):
    return result.experiment.build_model()


class OnEpoch(TrainingCallback):
    """A callback that hands each epoch's report to `function`."""

    def __init__(self, function) -> None:
        self.function = function

    def on_epoch(self, report) -> None:
        self.function(report)


def test_same_seed_gives_identical_runs_and_another_seed_differs(shared_data_dir, tmp_path):
    # PatchTST has dropout, so this covers the global torch RNG as well as the shuffling generator.
    first = run_experiment(tiny_spec(shared_data_dir, "patchtst", seed=7), artifact_dir=tmp_path / "a")
    again = run_experiment(tiny_spec(shared_data_dir, "patchtst", seed=7), artifact_dir=tmp_path / "b")
    other = run_experiment(tiny_spec(shared_data_dir, "patchtst", seed=8), artifact_dir=tmp_path / "c")

    def losses(result):
        return [(row["train_loss"], row["val_loss"]) for row in result.history]

    assert losses(first) == losses(again)
    assert (first.test_mse, first.test_mae) == (again.test_mse, again.test_mae)
    assert losses(first) != losses(other)
    assert first.test_mse != other.test_mse
    weights_a = load_file(tmp_path / "a" / "model" / "weights.safetensors")
    weights_b = load_file(tmp_path / "b" / "model" / "weights.safetensors")
    assert all(torch.equal(weights_a[name], weights_b[name]) for name in weights_a)


def test_test_metrics_cover_every_window_and_saved_weights_reproduce_them(shared_data_dir, tmp_path):
    spec = tiny_spec(shared_data_dir, batch_size=64, limit_eval_batches=None, epochs=1)
    result = run_experiment(spec, artifact_dir=tmp_path)

    data = load_forecast_data(spec.data, DataProtocol(seq_len=48, pred_len=24))
    assert data.test.num_windows % 64 != 0  # the last batch is partial: a mean of batch means would differ
    model = fresh_model(result)
    load_model(model, tmp_path / "model" / "weights.safetensors")
    model.eval()
    with torch.no_grad():
        batch = data.test.batch(torch.arange(data.test.num_windows))
        forecast, _ = model(batch.x, batch.x_mark)
    error = (forecast - batch.y).double().numpy()
    assert result.test_mse == pytest.approx(np.mean(error**2), rel=1e-6)
    assert result.test_mae == pytest.approx(np.mean(np.abs(error)), rel=1e-6)
    # The public evaluate() on the reloaded weights gives the engine's numbers exactly.
    score = evaluate(model, data.test, features="M", batch_size=64)
    assert (score.mse, score.mae) == (result.test_mse, result.test_mae)
    assert result.test_windows == result.test_windows_total == data.test.num_windows


def test_ms_scores_only_the_target_channel(shared_data_dir, tmp_path):
    result = run_experiment(tiny_spec(shared_data_dir, features="MS", epochs=1, limit_eval_batches=1),
                            artifact_dir=tmp_path)
    data = load_forecast_data(result.experiment.data, DataProtocol(seq_len=48, pred_len=24, features="MS"))
    model = fresh_model(result)
    load_model(model, tmp_path / "model" / "weights.safetensors")
    model.eval()
    with torch.no_grad():
        batch = data.test.batch(torch.arange(16))
        forecast, _ = model(batch.x, batch.x_mark)  # (16, 24, 7)
    error = (forecast[..., -1] - batch.y[..., -1]).double().numpy()
    assert result.test_mse == pytest.approx(np.mean(error**2), rel=1e-6)
    assert data.columns[-1] == "OT"


def test_early_stopping_stops_after_patience_and_restores_the_best_weights(shared_data_dir, tmp_path):
    # A learning rate this large makes validation loss jump about, so patience 1 stops early.
    states = {}

    def keep_state(report):
        states[report.epoch] = report.state()

    spec = tiny_spec(shared_data_dir, epochs=8, patience=1, learning_rate=0.5, lradj="constant")
    result = run_experiment(spec, callbacks=[OnEpoch(keep_state)], artifact_dir=tmp_path)

    val = [row["val_loss"] for row in result.history]
    assert result.epochs_run < 8
    assert len(val) == result.epochs_run
    # Stopped at the first epoch that did not improve on the best before it (TSLib: a tie is an improvement).
    first_worse = next(index for index in range(1, len(val)) if val[index] > min(val[:index]))
    assert result.epochs_run == first_worse + 1
    assert result.best_epoch == int(np.argmin(val)) + 1
    assert result.best_val_loss == min(val)
    assert result.best_epoch < result.epochs_run
    saved = load_file(tmp_path / "model" / "weights.safetensors")
    best = states[result.best_epoch]["model"]
    last = states[result.epochs_run]["model"]
    assert all(torch.equal(saved[name], best[name]) for name in saved)
    assert not all(torch.equal(saved[name], last[name]) for name in saved)


@pytest.mark.parametrize(("loss", "val_metric", "watched"), [
    ("mae", "loss", "val_mae"), ("mse", "loss", "val_mse"), ("mae", "mse", "val_mse"), ("mse", "mae", "val_mae")])
def test_val_metric_chooses_what_early_stopping_and_the_kept_checkpoint_watch(loss, val_metric, watched,
                                                                              shared_data_dir, tmp_path):
    spec = tiny_spec(shared_data_dir, epochs=6, patience=2, learning_rate=0.5, lradj="constant", loss=loss,
                     val_metric=val_metric)
    result = run_experiment(spec, artifact_dir=tmp_path)

    assert result.experiment.train.val_metric == val_metric
    assert [row["val_loss"] for row in result.history] == [row[watched] for row in result.history]
    assert all(row["val_mse"] != row["val_mae"] for row in result.history)
    assert result.best_val_loss == min(row[watched] for row in result.history)
    assert result.best_epoch == int(np.argmin([row[watched] for row in result.history])) + 1


def test_type1_halves_the_rate_after_each_epoch_from_the_second(shared_data_dir, tmp_path):
    spec = tiny_spec(shared_data_dir, epochs=4, patience=10, learning_rate=1e-3, lradj="type1", limit_train_batches=1,
                     limit_eval_batches=1)
    result = run_experiment(spec, artifact_dir=tmp_path)
    assert [row["lr"] for row in result.history] == pytest.approx([1e-3, 1e-3, 5e-4, 2.5e-4], rel=1e-12)


def test_schedules_follow_tslib_adjust_learning_rate():
    config = TrainConfig(epochs=10, learning_rate=1e-3, lradj="type1")
    assert [scheduled_learning_rate(config, epoch) for epoch in (1, 2, 3, 10)] == [1e-3, 5e-4, 2.5e-4, 1e-3 / 512]
    cosine = replace(config, lradj="cosine")
    assert scheduled_learning_rate(cosine, 5) == pytest.approx(5e-4)
    assert scheduled_learning_rate(cosine, 10) == pytest.approx(0.0, abs=1e-18)
    assert scheduled_learning_rate(replace(config, lradj="constant"), 7) == 1e-3


def test_resuming_from_a_saved_state_matches_an_uninterrupted_run(shared_data_dir, tmp_path):
    spec = tiny_spec(shared_data_dir, "patchtst", epochs=3, patience=5)
    checkpoints = {}

    def save(report):
        path = tmp_path / f"epoch{report.epoch}.pt"
        torch.save(report.state(), path)
        checkpoints[report.epoch] = path

    whole = run_experiment(spec, callbacks=[OnEpoch(save)], artifact_dir=tmp_path / "whole")
    state = torch.load(checkpoints[1], weights_only=True)
    resumed = run_experiment(spec, resume_state=state, artifact_dir=tmp_path / "resumed")

    assert state["epoch"] == 1
    assert list(resumed.history) == [
        {**row, "epoch_seconds": resumed.history[index]["epoch_seconds"],
         "samples_per_s": resumed.history[index]["samples_per_s"]} if index >= 1 else row
        for index, row in enumerate(whole.history)
    ]
    assert (resumed.test_mse, resumed.test_mae, resumed.best_epoch) == (whole.test_mse, whole.test_mae,
                                                                          whole.best_epoch)


def test_raising_from_on_epoch_stops_training(shared_data_dir, tmp_path):
    seen = []

    class Stop(Exception):
        pass

    def stop_after_first(report):
        seen.append(report.epoch)
        raise Stop

    with pytest.raises(Stop):
        run_experiment(tiny_spec(shared_data_dir, epochs=5), callbacks=[OnEpoch(stop_after_first)],
                       artifact_dir=tmp_path)
    assert seen == [1]


def test_a_diverging_run_raises_non_finite_loss_error(shared_data_dir, tmp_path):
    spec = tiny_spec(shared_data_dir, learning_rate=1e30, epochs=3, lradj="constant")
    with pytest.raises(NonFiniteLossError, match="diverged at epoch 1.*lower train.learning_rate"):
        run_experiment(spec, artifact_dir=tmp_path)


# 2 training and 2 validation forwards an epoch (limit 2 batches each), then the test pass after the last epoch.
@pytest.mark.parametrize(("forwards_before", "where"), [
    (0, "epoch 1 (training)"), (2, "epoch 1 (validation)"), (4, "epoch 2 (training)"), (8, "the test after epoch 2"),
])
def test_running_out_of_gpu_memory_names_the_run_the_epoch_and_the_fix(forwards_before, where, out_of_gpu_memory,
                                                                        shared_data_dir, tmp_path):
    out_of_gpu_memory(after=forwards_before)
    spec = tiny_spec(shared_data_dir, epochs=2, limit_train_batches=2, limit_eval_batches=2)
    with pytest.raises(GpuOutOfMemoryError) as caught:
        run_experiment(spec, artifact_dir=tmp_path)

    assert str(caught.value) == (
        f"dlinear on ETTh1 (pred_len 24) ran out of GPU memory in {where} at batch size 16; lower train.batch_size "
        "(e.g. train.batch_size=8) or give the run a larger GPU share"
    )
    assert isinstance(caught.value.__cause__, torch.OutOfMemoryError)
    assert "Tried to allocate 2.00 GiB" in str(caught.value.__cause__)


def test_mixmamba_writes_config_weights_and_both_plots(shared_data_dir, tmp_path):
    spec = tiny_spec(shared_data_dir, "mixmamba", epochs=1, batch_size=4, limit_train_batches=2, limit_eval_batches=2)
    result = run_experiment(spec, artifact_dir=tmp_path)

    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert config["model"] == "mixmamba" and config["seed"] == 2021
    assert config["model_config"]["d_model"] == 8 and config["model_config"]["enc_in"] == 7
    assert config["train"]["batch_size"] == 4 and config["train"]["optimizer"] == "adamw"  # from the recipe
    assert config["data"]["dataset"] == "ETTh1" and len(config["data"]["sha256"]) == 64
    for image in ("plots/forecast.png", "plots/experts.png"):
        assert (tmp_path / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model = fresh_model(result)
    load_model(model, tmp_path / "model" / "weights.safetensors")
    data = load_forecast_data(result.experiment.data, DataProtocol(seq_len=48, pred_len=24))
    score = evaluate(model, data.test, features="M", batch_size=4, limit=2, seed=2021)
    assert (score.mse, score.mae) == (result.test_mse, result.test_mae)


def test_resolve_fills_the_recipe_and_settings_win(shared_data_dir):
    data = resolve_dataset("ETTh1", shared_data_dir)
    reference = recipe("mixmamba", "ETTh1", 96)
    plain = resolve_experiment("mixmamba", data, pred_len=96)
    assert plain.train.learning_rate == reference.train["learning_rate"] == 1e-3
    assert plain.train.optimizer == "adamw" and plain.train.loss == "mae"
    assert all(getattr(plain.model_config, key) == value for key, value in reference.model.items())

    resolved = resolve_experiment("mixmamba", data, pred_len=96, settings={
        "model.d_model": 32, "train.learning_rate": 5e-3, "train.batch_size": 32, "train.epochs": 2})
    assert resolved.model_config.d_model == 32
    assert resolved.train.learning_rate == 5e-3 and resolved.train.epochs == 2 and resolved.train.batch_size == 32
    assert resolved.with_settings({}) == resolved
    assert resolved.with_settings({"model.d_model": 32}) == resolved
    assert resolved.with_settings({"seq_len": 192}).model_config.seq_len == 192


@pytest.mark.parametrize("setting", [{"train.optimizer": "sgd"}, {"train.epochs": 0}, {"train.learning_rate": "fast"},
                                     {"train.batch_size": 2.5}, {"train.lradj": "type9"}, {"train.warmup": 3},
                                     {"train.val_metric": "rmse"}, {"model.d_model": "wide"}, {"d_model": 8}])
def test_bad_settings_raise_a_setting_error_naming_the_setting(setting, shared_data_dir):
    with pytest.raises(SettingError) as caught:
        resolve_experiment("dlinear" if "model.d_model" not in setting else "mixmamba",
                           resolve_dataset("ETTh1", shared_data_dir), pred_len=96, settings=setting)
    assert caught.value.setting == next(iter(setting))


def test_an_unavailable_device_is_a_setting_error(shared_data_dir):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(SettingError, match="no CUDA GPU"):
        run_experiment(replace(tiny_spec(shared_data_dir), device="cuda"))
