"""Fused training arrays on real ETTh1: each member trains exactly as the same experiment alone (float64, step by
step, and through the whole engine), members stop independently, dropout masks are independent, and experiments
that differ in a shape cannot fuse."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from benchmarks.data.files import resolve_dataset
from benchmarks.data.protocol import load_forecast_data
from benchmarks.errors import SettingError
from benchmarks.experiment import resolve_experiment
from benchmarks.training.callbacks import StopTraining, TrainingCallback
from benchmarks.training.engine import run_experiment, seed_everything
from benchmarks.training.evaluation import target_channels
from benchmarks.training.fused_engine import fusion_key, run_fused
from benchmarks.training.member_stack import MemberDropout, MemberStack
from benchmarks.training.stacked_adam import StackedAdam
from benchmarks.training.step import FusedTrainStep, TrainStep, make_optimizer

TINY = {
    "dlinear": {},
    "patchtst": {"d_model": 16, "n_heads": 2, "e_layers": 1, "d_ff": 32, "dropout": 0.0},
    "itransformer": {"d_model": 16, "n_heads": 2, "e_layers": 1, "d_ff": 32, "dropout": 0.0},
    "mixmamba": {"d_model": 8, "num_experts": 3, "dropout": 0.0, "scan_backend": "reference"},
}
# Members differ in every per-member setting: learning rate, optimiser and weight decay, loss, seed.
MEMBERS = [
    {"seed": 1, "train.learning_rate": 1e-3},
    {"seed": 2, "train.learning_rate": 3e-3, "train.optimizer": "adamw", "train.weight_decay": 0.05},
    {"seed": 3, "train.learning_rate": 5e-4, "train.loss": "mae", "train.weight_decay": 0.01},
]


def experiments(data_dir, model, members=MEMBERS, **train):
    file = resolve_dataset("ETTh1", data_dir)
    base = {f"model.{key}": value for key, value in TINY[model].items()}
    base.update({"train.batch_size": 8, "train.epochs": 2, "train.limit_train_batches": 4,
                 "train.limit_eval_batches": 3, **{f"train.{key}": value for key, value in train.items()}})
    found = []
    for member in members:
        settings = {**base, **{key: value for key, value in member.items() if key != "seed"}}
        found.append(resolve_experiment(model, file, pred_len=24, seq_len=48, seed=member["seed"], device="cpu",
                                        settings=settings))
    return found


def float64_split(split):
    return dataclasses.replace(split, values=split.values.double(), marks=split.marks.double())


def unfused_losses(experiment, split, steps):
    """Per-step training losses of `experiment` alone, in float64: the engine's TrainStep and optimiser, the global
    generator for the model's draws, a generator seeded with the seed for the batch order."""
    seed_everything(experiment.seed)
    model = experiment.build_model().double()
    step = TrainStep(model, make_optimizer(model, experiment.train, torch.device("cpu")), experiment.train.loss,
                     target_channels("M"), experiment.train.batch_size)
    shuffle = torch.Generator().manual_seed(experiment.seed)
    batches = split.iter_batches(experiment.train.batch_size, shuffle=True, generator=shuffle, limit=steps)
    return [step(batch).item() for batch in batches]


def fused_losses(members, split, steps):
    """The same experiments as one fused array, in float64: per-step losses, (steps, K)."""
    models, streams = [], []
    for experiment in members:
        seed_everything(experiment.seed)
        models.append(experiment.build_model().double())
        streams.append(torch.Generator().set_state(torch.get_rng_state()))
    stack = MemberStack(models)
    trains = [experiment.train for experiment in members]
    optimizer = StackedAdam(list(stack.params.values()), [t.learning_rate for t in trains],
                            [t.weight_decay for t in trains], [t.optimizer == "adamw" for t in trains])
    step = FusedTrainStep(stack, optimizer, [t.loss for t in trains], target_channels("M"), trains[0].batch_size)
    shuffles = [torch.Generator().manual_seed(experiment.seed) for experiment in members]
    losses = []
    for batch in split.iter_member_batches(trains[0].batch_size, shuffles, limit=steps):
        losses.append(step(batch, stack.draw(batch.x.shape[1], streams)).tolist())
    return losses


@pytest.mark.parametrize("model", list(TINY))
def test_each_fused_member_trains_step_for_step_as_alone_in_float64(shared_data_dir, model):
    members = experiments(shared_data_dir, model)
    data = load_forecast_data(members[0].data, members[0].protocol, device="cpu")
    split = float64_split(data.train)
    fused = fused_losses(members, split, steps=20)
    assert len(fused) == 20
    for k, experiment in enumerate(members):
        alone = unfused_losses(experiment, split, steps=20)
        for step, (ours, reference) in enumerate(zip([row[k] for row in fused], alone)):
            assert ours == pytest.approx(reference, rel=1e-9, abs=0), (model, k, step)
    # the members really differ (their own seeds, rates and losses)
    assert len({round(value, 12) for value in fused[-1]}) == len(members)


@pytest.mark.parametrize("model", ["mixmamba", "patchtst"])
def test_fused_engine_matches_each_run_alone(shared_data_dir, tmp_path, model):
    # float32: vmap batches the matmuls differently, so sums round differently, and Adam turns rounding noise in
    # near-zero gradients into whole steps of size lr. The float64 test above shows the computation is the same.
    members = experiments(shared_data_dir, model)
    fused = run_fused(members, artifact_dirs=[tmp_path / f"fused{k}" for k in range(len(members))])
    for k, (experiment, result) in enumerate(zip(members, fused)):
        alone = run_experiment(experiment, artifact_dir=tmp_path / f"alone{k}")
        assert result.experiment == experiment
        assert [row["epoch"] for row in result.history] == [row["epoch"] for row in alone.history]
        for ours, reference in zip(result.history, alone.history):
            for name in ("train_loss", "val_loss", "val_mse", "val_mae", "lr"):
                assert ours[name] == pytest.approx(reference[name], rel=1e-3), (k, name)
        assert result.best_epoch == alone.best_epoch
        assert result.test_mse == pytest.approx(alone.test_mse, rel=1e-3)
        assert result.test_mae == pytest.approx(alone.test_mae, rel=1e-3)
        assert (result.test_windows, result.test_windows_total) == (alone.test_windows, alone.test_windows_total)
        assert (result.artifact_dir / "model" / "weights.safetensors").is_file()


class StopAfter(TrainingCallback):
    def __init__(self, epoch):
        self.epoch = epoch
        self.epochs = []
        self.ended = None

    def on_epoch(self, report):
        self.epochs.append(report.epoch)
        if report.epoch >= self.epoch:
            raise StopTraining

    def on_end(self, result):
        self.ended = result


def test_members_stop_independently_and_a_stopped_member_leaves_the_array(shared_data_dir, tmp_path):
    members = experiments(shared_data_dir, "dlinear", epochs=4, patience=10)
    watchers = [StopAfter(1), StopAfter(10), StopAfter(2)]
    results = run_fused(members, callbacks=[[w] for w in watchers],
                        artifact_dirs=[tmp_path / str(k) for k in range(3)])
    assert [w.epochs for w in watchers] == [[1], [1, 2, 3, 4], [1, 2]]
    assert [r.epochs_run for r in results] == [1, 4, 2]
    assert all(w.ended is r for w, r in zip(watchers, results))
    # the member that kept training alone is still the same run as alone (its batch order and weights untouched)
    alone = run_experiment(members[1], artifact_dir=tmp_path / "alone")
    assert results[1].history[-1]["val_loss"] == pytest.approx(alone.history[-1]["val_loss"], rel=2e-5)


def test_after_epoch_stops_members_once_every_member_reported_the_epoch(shared_data_dir, tmp_path):
    members = experiments(shared_data_dir, "dlinear", epochs=3, patience=10)
    watchers = [StopAfter(10) for _ in members]
    seen = []

    def after_epoch(epoch):
        seen.append((epoch, [len(w.epochs) for w in watchers]))
        return {0, 2} if epoch == 1 else None

    results = run_fused(members, callbacks=[[w] for w in watchers], artifact_dirs=[tmp_path / str(k) for k in range(3)],
                        after_epoch=after_epoch)
    assert seen == [(1, [1, 1, 1]), (2, [1, 2, 1]), (3, [1, 3, 1])]
    assert [r.epochs_run for r in results] == [1, 3, 1]
    assert all(w.ended is r for w, r in zip(watchers, results))  # the stopped ones are tested like any other


def test_dropout_masks_are_independent_between_members_and_rates_per_member():
    torch.manual_seed(0)
    layers = [torch.nn.Sequential(torch.nn.Linear(4, 256), torch.nn.Dropout(rate)) for rate in (0.5, 0.5, 0.0)]
    stack = MemberStack(layers)
    assert isinstance(stack.template[1], MemberDropout)
    x = torch.ones(3, 64, 4)
    with torch.no_grad():
        out = torch.func.vmap(lambda p, b, x: torch.func.functional_call(stack.template, (p, b), (x,)),
                              randomness="different")(stack.params, stack.buffers, x)
    zeros = out == 0
    assert 0.4 < zeros[0].float().mean() < 0.6 and 0.4 < zeros[1].float().mean() < 0.6
    assert not torch.equal(zeros[0], zeros[1])  # members' masks are drawn independently
    assert not zeros[2].any()  # rate 0: nothing dropped


def test_experiments_that_differ_in_a_shape_cannot_fuse(shared_data_dir):
    same = experiments(shared_data_dir, "mixmamba")
    assert len({fusion_key(experiment) for experiment in same}) == 1
    # dropout is a member setting of MixMamba; d_model shapes the weights; batch size shapes the step
    with_dropout = experiments(shared_data_dir, "mixmamba", members=[{"seed": 1, "model.dropout": 0.3}])[0]
    assert fusion_key(with_dropout) == fusion_key(same[0])
    wider = experiments(shared_data_dir, "mixmamba", members=[{"seed": 1, "model.d_model": 16}])[0]
    bigger_batch = experiments(shared_data_dir, "mixmamba", batch_size=16)[0]
    for other in (wider, bigger_batch):
        assert fusion_key(other) != fusion_key(same[0])
        with pytest.raises(SettingError, match="fused array"):
            run_fused([same[0], other])
    patchtst = experiments(shared_data_dir, "patchtst", members=[{"seed": 1}, {"seed": 2, "model.dropout": 0.2}])
    assert fusion_key(patchtst[0]) != fusion_key(patchtst[1])  # its dropout also feeds the attention kernel


def test_the_fused_speed_benchmark_writes_its_rows(shared_data_dir, tmp_path):
    from benchmarks.speed import fused as fused_bench

    output = tmp_path / "fused.json"
    report = fused_bench.main(["--data-dir", str(shared_data_dir), "--device", "cpu", "--parts", "steps",
                               "--configs", "dlinear", "--members", "1,3", "--steps", "2", "--warmup", "1",
                               "--output", str(output)])
    assert output.is_file()
    rows = report["steps"]
    assert [row["members"] for row in rows] == [1, 3]
    assert rows[1]["ms_per_member_step"] == pytest.approx(rows[1]["ms_per_step"] / 3)
    assert rows[0]["single_model_ms_per_step"] > 0 and rows[0]["graphed"] is False  # nothing to capture on a CPU
