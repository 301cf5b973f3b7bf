"""The fused engine: experiments that share every tensor shape trained as one stacked model (a fused training array).

Each member keeps its own weights, optimiser state, random streams, learning rate and schedule, loss, dropout rates,
early stopping and epochs; one forward/backward/optimiser step serves all of them. Members leaving the array together
are tested together on every test window and report through their own `TrainingCallback`s, exactly as
`run_experiment` runs do.
"""
from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Collection, Sequence

import torch

from benchmarks.data.protocol import load_forecast_data
from benchmarks.errors import SettingError
from benchmarks.experiment import Experiment
from benchmarks.models.registry import model_plugin
from benchmarks.training.artifacts import write_artifacts
from benchmarks.training.callbacks import ExperimentResult, TrainingCallback, notify_epoch
from benchmarks.training.config import TRAIN_FIELDS
from benchmarks.training.engine import (
    EpochTracker, NonFiniteLossError, clone_tensors, naming_out_of_memory, resolve_device, seed_everything,
)
from benchmarks.training.evaluation import evaluate_members, target_channels
from benchmarks.training.member_stack import MemberStack
from benchmarks.training.stacked_adam import StackedAdam
from benchmarks.training.step import FusedEvalStep, FusedTrainStep

# TrainConfig fields each member of an array has its own value of; the others shape the shared step.
MEMBER_TRAIN_FIELDS = ("epochs", "learning_rate", "optimizer", "weight_decay", "lradj", "patience", "loss",
                       "val_metric")


def member_settings(model: str) -> frozenset[str]:
    """The settings (`train.<name>`, `model.<name>`) each member of an array of `model` has its own value of:
    MEMBER_TRAIN_FIELDS and the model plugin's `member_fields`; every other setting shapes the shared step."""
    return frozenset({f"train.{name}" for name in MEMBER_TRAIN_FIELDS}
                     | {f"model.{name}" for name in model_plugin(model).member_fields})


def fusion_key(experiment: Experiment) -> str:
    """What experiments must share to train as one array: the model and every setting outside `member_settings`
    (model config, batch size, bf16, compile, batch limits), the dataset, protocol and device. Experiments with equal
    keys fuse."""
    own = member_settings(experiment.model)
    shared = {
        "model": experiment.model,
        "config": {k: v for k, v in experiment.model_config_dict().items() if f"model.{k}" not in own},
        "train": {name: getattr(experiment.train, name) for name in TRAIN_FIELDS if f"train.{name}" not in own},
        "data": [experiment.dataset, experiment.data.sha256], "protocol": dataclasses.asdict(experiment.protocol),
        "device": experiment.device,
    }
    return json.dumps(shared, sort_keys=True, default=str)


class _Member:
    """One experiment of the array: its callbacks, random streams, epoch bookkeeping and best weights."""

    def __init__(self, index: int, experiment: Experiment, callbacks: Sequence[TrainingCallback],
                 weights: dict[str, torch.Tensor], stream: torch.Generator) -> None:
        self.index = index
        self.experiment = experiment
        self.callbacks = tuple(callbacks)
        self.shuffle = torch.Generator().manual_seed(experiment.seed)  # the batch order, as run_experiment's
        self.stream = stream  # what the model draws (router coin flips), as the global generator in run_experiment
        self.tracker = EpochTracker(experiment)
        self.best_weights = weights
        self.error: BaseException | None = None


def run_fused(experiments: Sequence[Experiment], *, callbacks: Sequence[Sequence[TrainingCallback]] | None = None,
              artifact_dirs: Sequence[Path | None] | None = None,
              after_epoch: Callable[[int], Collection[int] | None] | None = None,
              ) -> list[ExperimentResult | NonFiniteLossError]:
    """Train `experiments` as one fused array; each member as `run_experiment` would train it alone with the same
    seed, tested on every test window, its artifacts written. Results come back in the given order.

    callbacks[k] / artifact_dirs[k]: member k's (as run_experiment's `callbacks` / `artifact_dir`). A member leaves
    the array, and stops costing compute, when its early stopping fires, its epochs are done or one of its callbacks
    raises StopTraining; the members leaving after one epoch are then tested in one fused pass and their callbacks'
    `on_end` called, while the others go on. A member that diverges leaves with NonFiniteLossError as its result (its
    callbacks get on_failure). Any other error ends the whole array (on_failure for the members still in it).
    after_epoch(epoch): called once the array's epoch has ended for every member (their on_epoch called), before
    the members leaving are tested; it may return indices of members to stop now, as if a callback had raised
    StopTraining (a decision that needs every member's epoch, e.g. one over a configuration's seeds).
    Raises SettingError when the experiments do not share a `fusion_key` or ask for torch.compile.
    """
    experiments = list(experiments)
    callbacks = list(callbacks) if callbacks is not None else [()] * len(experiments)
    artifact_dirs = list(artifact_dirs) if artifact_dirs is not None else [None] * len(experiments)
    _check_fusable(experiments)
    first = experiments[0]
    device = resolve_device(first.device)
    data = load_forecast_data(first.data, first.protocol, device=device)
    members, models = [], []
    for index, experiment in enumerate(experiments):
        seed_everything(experiment.seed)
        model = experiment.build_model()
        stream = (torch.Generator().set_state(torch.get_rng_state()) if device.type == "cpu"
                  else torch.Generator(device).manual_seed(experiment.seed))
        model = model.to(device)
        members.append(_Member(index, experiment, callbacks[index], clone_tensors(model.state_dict()), stream))
        models.append(model)
    started_at = time.time()
    results: dict[int, ExperimentResult | NonFiniteLossError] = {}

    def leave(leaving: list[_Member]) -> None:
        for member, result in zip(leaving, _test(leaving, data, device, artifact_dirs, started_at)):
            results[member.index] = result
            if isinstance(result, ExperimentResult):
                for callback in member.callbacks:
                    callback.on_end(result)

    try:
        for member in members:
            for callback in member.callbacks:
                callback.on_start(member.experiment, ())
        _FusedTraining(members, MemberStack(models), data, device, leave, after_epoch).fit()
    except BaseException as error:
        for member in members:
            if member.index not in results and member.error is None:
                for callback in member.callbacks:
                    callback.on_failure(error)
        raise
    return [results[member.index] for member in members]


def _check_fusable(experiments: list[Experiment]) -> None:
    if not experiments:
        raise SettingError("a fused array needs at least one experiment", setting="fuse")
    keys = {fusion_key(experiment) for experiment in experiments}
    if len(keys) > 1:
        raise SettingError("these experiments differ in a setting that shapes the model or the step (only "
                           f"{', '.join(MEMBER_TRAIN_FIELDS)} and the model's member fields may differ within a "
                           "fused array); group them by fusion_key", setting="fuse")
    if experiments[0].train.compile:
        raise SettingError("{setting}=true is not available in a fused array (its step is one CUDA graph already); "
                           "set it to false or train unfused", setting="train.compile")


class _FusedTraining:
    """The epoch loop of an array: one shared step per batch, then each member's validation, schedule and stopping."""

    def __init__(self, members: list[_Member], stack: MemberStack, data: Any, device: torch.device,
                 leave: Callable[[list[_Member]], None],
                 after_epoch: Callable[[int], Collection[int] | None] | None) -> None:
        first = members[0].experiment
        self.leave = leave
        self.after_epoch = after_epoch
        self.config = first.train  # the shared fields (batch size, bf16, limits)
        self.features = first.protocol.features
        self.active = list(members)
        self.stack = stack
        self.data = data
        self.device = device
        trains = [member.experiment.train for member in members]
        optimizer = StackedAdam(list(stack.params.values()), [train.learning_rate for train in trains],
                                [train.weight_decay for train in trains],
                                [train.optimizer == "adamw" for train in trains], capturable=device.type == "cuda")
        self.step = FusedTrainStep(stack, optimizer, [train.loss for train in trains],
                                   target_channels(self.features), self.config.batch_size, bf16=self.config.bf16,
                                   cuda_graph=device.type == "cuda")
        self.validation_step = FusedEvalStep(stack, target_channels(self.features), self.config.batch_size,
                                             bf16=self.config.bf16, cuda_graph=device.type == "cuda")

    def fit(self) -> None:
        epoch = 0
        while self.active:
            epoch += 1
            start = time.perf_counter()
            with naming_out_of_memory(self.active[0].experiment, self.device, f"epoch {epoch} (training)"):
                train_losses, samples = self._train_one_epoch(epoch)
            train_seconds = time.perf_counter() - start
            with naming_out_of_memory(self.active[0].experiment, self.device, f"epoch {epoch} (validation)"):
                scores = evaluate_members(self.stack, self.data.val, features=self.features,
                                          batch_size=self.config.batch_size,
                                          generators=[member.stream for member in self.active],
                                          limit=self.config.limit_eval_batches, bf16=self.config.bf16,
                                          step=self.validation_step)
            seconds = time.perf_counter() - start
            staying = []
            for position, (member, score, train_loss) in enumerate(zip(self.active, scores, train_losses)):
                if self._end_epoch(member, position, epoch, train_loss, score, seconds, samples / train_seconds):
                    staying.append(position)
            stopping = set(self.after_epoch(epoch) or ()) if self.after_epoch is not None else set()
            for position in [position for position in staying if self.active[position].index in stopping]:
                self.active[position].tracker.stopped = True
                staying.remove(position)
            if len(staying) < len(self.active):
                leaving = [member for position, member in enumerate(self.active) if position not in staying]
                self.active = [self.active[position] for position in staying]
                if self.active:
                    self.step.keep(torch.tensor(staying, device=self.device))
                    self.validation_step.reset()
                self.leave(leaving)

    def _end_epoch(self, member: _Member, position: int, epoch: int, train_loss: float, score: Any, seconds: float,
                   samples_per_s: float) -> bool:
        """Member `member`'s epoch bookkeeping and callbacks; whether it stays in the array."""
        tracker = member.tracker
        try:
            report, improved = tracker.end_epoch(epoch, train_loss, score, seconds, samples_per_s,
                                                 lambda: {"epoch": tracker.epoch})
        except NonFiniteLossError as error:
            member.error = error
            for callback in member.callbacks:
                callback.on_failure(error)
            return False
        if improved:
            member.best_weights = self.stack.member_state_dict(position)
        self.step.optimizer.learning_rates[position] = tracker.learning_rate  # in place: the graph reads it
        if notify_epoch(member.callbacks, report):
            tracker.stopped = True
        return not tracker.finished

    def _train_one_epoch(self, epoch: int) -> tuple[list[float], int]:
        """One pass of every active member over its own shuffle of the training windows: (mean batch loss incl. aux
        loss per member, windows each member saw)."""
        self.stack.train(True)
        total = torch.zeros(len(self.active), device=self.device)
        batches = samples = 0
        limit = self.config.limit_train_batches
        steps = -(-self.data.train.num_windows // self.config.batch_size)
        steps = steps if limit is None else min(steps, limit)
        for batch in self.data.train.iter_member_batches(self.config.batch_size,
                                                         [member.shuffle for member in self.active], limit):
            windows = batch.x.shape[1]
            draws = self.stack.draw(windows, [member.stream for member in self.active])
            total += self.step(batch, draws)  # accumulated on the device: one host synchronisation per epoch
            batches += 1
            samples += windows
            for member in self.active:
                for callback in member.callbacks:
                    callback.on_batch(epoch, batches, steps)
        if batches == 0:
            experiment = self.active[0].experiment
            raise SettingError(f"{experiment.dataset} has no training windows for {{setting}} {experiment.seq_len} + "
                               f"pred_len {experiment.pred_len}; use shorter windows", setting="seq_len")
        return (total / batches).tolist(), samples


def _test(members: list[_Member], data: Any, device: torch.device, artifact_dirs: list[Path | None],
          started_at: float) -> list[ExperimentResult | NonFiniteLossError]:
    """The best weights of `members` (leaving the array together) tested in one fused pass over every test window,
    a diverged member's result its error; each member draws from a generator seeded with its seed, as
    run_experiment's test does."""
    trained = [member for member in members if member.error is None]
    results: list[ExperimentResult | NonFiniteLossError] = [member.error for member in members]
    if not trained:
        return results
    models = []
    for member in trained:
        model = member.experiment.build_model().to(device)
        model.load_state_dict(member.best_weights)
        models.append(model)
    stack = MemberStack(models)
    train = trained[0].experiment.train
    generators = [(torch.Generator() if device.type == "cpu" else torch.Generator(device)).manual_seed(
        member.experiment.seed) for member in trained]
    with naming_out_of_memory(trained[0].experiment, device, "the test"):
        scores = evaluate_members(stack, data.test, features=trained[0].experiment.protocol.features,
                                  batch_size=train.batch_size, generators=generators, limit=train.limit_eval_batches,
                                  bf16=train.bf16, collect_routing=True)
    for member, model, test in zip(trained, models, scores):
        experiment, tracker = member.experiment, member.tracker
        given = artifact_dirs[member.index]
        artifact_dir = Path(given) if given is not None else Path(tempfile.mkdtemp(prefix="mixbench-"))
        write_artifacts(artifact_dir, experiment, model, data, test.windows, test.routing)
        results[members.index(member)] = ExperimentResult(
            experiment=experiment, best_epoch=tracker.best_epoch, best_val_loss=tracker.best_val_loss,
            epochs_run=tracker.epoch, test_mse=test.mse, test_mae=test.mae, history=tuple(tracker.history),
            artifact_dir=artifact_dir, test_windows=test.windows, test_windows_total=test.total,
            started_at=started_at, ended_at=time.time(),
        )
    return results
