"""The experiment engine: trains one resolved experiment under the Time-Series-Library protocol and tests it.

Owns the loop (learning-rate schedule, early stopping with best-weight restore, resumable state) and the test over
every window; it reports through `TrainingCallback`s and knows no tracking, search or progress display.
"""
from __future__ import annotations

import copy
import math
import random
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from benchmarks.data.protocol import ForecastData, load_forecast_data
from benchmarks.errors import SettingError
from benchmarks.experiment import Experiment
from benchmarks.training.artifacts import write_artifacts
from benchmarks.training.callbacks import EpochReport, ExperimentResult, TrainingCallback, notify_epoch
from benchmarks.training.config import TrainConfig
from benchmarks.training.evaluation import Score, evaluate, target_channels
from benchmarks.training.step import TrainStep, make_optimizer

# torch.compile mode for TrainConfig.compile. Not "reduce-overhead": the engine captures the whole step (optimiser
# included) in one CUDA graph itself, and Inductor's CUDA graphs cannot nest inside that capture.
COMPILE_MODE = "default"


class NonFiniteLossError(SettingError):
    """Training diverged: a training or validation loss was NaN or infinite at the end of an epoch."""


class GpuOutOfMemoryError(SettingError):
    """The GPU ran out of memory in a training epoch or an evaluation pass; the message is one line naming the run,
    the epoch, the batch size, the process's GPU share if capped, and the fix. The torch error is its __cause__."""


def resolve_device(name: str) -> torch.device:
    """`auto` -> the first CUDA GPU if there is one, else the CPU; `cpu`, `cuda` or `cuda:N` as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SettingError(f"{{setting}} {name!r} is unknown; use auto, cpu, cuda or cuda:N", setting="device") \
            from None
    if device.type not in ("cpu", "cuda"):
        raise SettingError(f"{{setting}} {name!r} is not supported; use auto, cpu, cuda or cuda:N", setting="device")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SettingError(f"{{setting}} {name!r}: no CUDA GPU is visible to PyTorch; use cpu (or auto)",
                           setting="device")
    return device


def run_experiment(experiment: Experiment, *, callbacks: Sequence[TrainingCallback] = (),
                   resume_state: dict[str, Any] | None = None, artifact_dir: Path | None = None) -> ExperimentResult:
    """Train `experiment`'s model with early stopping, restore its best weights, test it on every test window and
    write its artifacts, reporting to `callbacks` in order (on_start, on_batch/on_epoch..., on_end or on_failure).

    resume_state: an `EpochReport.state()` dict; training continues after that epoch as if never interrupted.
    artifact_dir: where config.yaml, model/weights.safetensors and plots/ go (a new temporary folder if None).
    """
    started_at = time.time()
    device = resolve_device(experiment.device)
    seed_everything(experiment.seed)
    data = load_forecast_data(experiment.data, experiment.protocol, device=device)
    model = experiment.build_model().to(device)
    try:
        training = _Training(experiment, model, data, device)
        if resume_state is not None:
            training.load_state(resume_state)
        for callback in callbacks:
            callback.on_start(experiment, tuple(training.tracker.history))
        training.fit(callbacks)
        model.load_state_dict(training.best_weights)
        train = experiment.train
        with naming_out_of_memory(experiment, device, f"the test after epoch {training.epoch}"):
            test = evaluate(model, data.test, features=experiment.protocol.features, batch_size=train.batch_size,
                            limit=train.limit_eval_batches, bf16=train.bf16, seed=experiment.seed,
                            collect_routing=True)
        artifact_dir = Path(artifact_dir) if artifact_dir is not None else Path(tempfile.mkdtemp(prefix="mixbench-"))
        write_artifacts(artifact_dir, experiment, model, data, test.windows, test.routing)
        result = ExperimentResult(
            experiment=experiment, best_epoch=training.tracker.best_epoch,
            best_val_loss=training.tracker.best_val_loss, epochs_run=training.epoch, test_mse=test.mse,
            test_mae=test.mae, history=tuple(training.tracker.history),
            artifact_dir=artifact_dir, test_windows=test.windows, test_windows_total=test.total,
            started_at=started_at, ended_at=time.time(),
        )
    except BaseException as error:
        for callback in callbacks:
            callback.on_failure(error)
        raise
    for callback in callbacks:
        callback.on_end(result)
    return result


class EpochTracker:
    """One run's epoch bookkeeping: the learning-rate schedule, early stopping (TSLib's EarlyStopping, where a tie
    counts as an improvement) and the history. Shared by the single-run and the fused engine."""

    def __init__(self, experiment: Experiment) -> None:
        self.experiment = experiment
        self.config = experiment.train
        self.epoch = 0
        self.learning_rate = self.config.learning_rate
        self.best_val_loss = math.inf
        self.best_epoch = 0
        self.bad_epochs = 0
        self.stopped = False
        self.history: list[dict[str, float]] = []

    @property
    def finished(self) -> bool:
        """Early stopping fired or every epoch is done."""
        return self.stopped or self.epoch >= self.config.epochs

    def end_epoch(self, epoch: int, train_loss: float, score: Score, seconds: float, samples_per_s: float,
                  state: Callable[[], dict[str, Any]]) -> tuple[EpochReport, bool]:
        """Records epoch `epoch`'s validation `score`: (the report for callbacks, whether it is the best so far).
        Raises NonFiniteLossError when the run diverged."""
        val_loss = score.mse if self.config.watched_metric == "mse" else score.mae
        if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
            experiment = self.experiment
            raise NonFiniteLossError(
                f"{experiment.model} on {experiment.dataset} diverged at epoch {epoch} (train loss {train_loss}, "
                f"validation loss {val_loss}); lower {{setting}} (now {self.learning_rate:g})",
                setting="train.learning_rate")
        used_learning_rate = self.learning_rate
        improved = val_loss <= self.best_val_loss
        if improved:
            self.best_val_loss, self.best_epoch, self.bad_epochs = val_loss, epoch, 0
        else:
            self.bad_epochs += 1
            self.stopped = self.bad_epochs >= self.config.patience
        self.epoch = epoch
        if not self.stopped:
            self.learning_rate = scheduled_learning_rate(self.config, epoch)
        report = EpochReport(epoch=epoch, train_loss=train_loss, val_loss=val_loss, val_mse=score.mse,
                             val_mae=score.mae, best_val_loss=self.best_val_loss, learning_rate=used_learning_rate,
                             seconds=seconds, samples_per_s=samples_per_s, state=state)
        self.history.append(report.row())
        return report, improved

    def state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "scheduler": {"learning_rate": self.learning_rate},
                "early_stopping": {"best_val_loss": self.best_val_loss, "best_epoch": self.best_epoch,
                                   "bad_epochs": self.bad_epochs, "stopped": self.stopped},
                "history": copy.deepcopy(self.history)}

    def load_state(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.learning_rate = float(state["scheduler"]["learning_rate"])
        stopping = state["early_stopping"]
        self.best_val_loss = float(stopping["best_val_loss"])
        self.best_epoch = int(stopping["best_epoch"])
        self.bad_epochs = int(stopping["bad_epochs"])
        self.stopped = bool(stopping["stopped"])
        self.history = copy.deepcopy(list(state["history"]))


class _Training:
    """The mutable state of one training run: model, optimiser, epoch bookkeeping, best weights, RNGs."""

    def __init__(self, experiment: Experiment, model: nn.Module, data: ForecastData, device: torch.device) -> None:
        self.experiment = experiment
        self.config = experiment.train
        self.model = model
        self.data = data
        self.device = device
        self.forward = (torch.compile(model, mode=COMPILE_MODE, dynamic=False) if self.config.compile
                        else model)
        self.features = experiment.protocol.features
        self.optimizer = make_optimizer(model, self.config, device)
        self.step = TrainStep(model, self.optimizer, self.config.loss, target_channels(self.features),
                              self.config.batch_size,
                              forward=self.forward, bf16=self.config.bf16, cuda_graph=device.type == "cuda")
        self.generator = torch.Generator().manual_seed(experiment.seed)
        self.tracker = EpochTracker(experiment)
        self.best_weights = clone_tensors(model.state_dict())

    @property
    def epoch(self) -> int:
        return self.tracker.epoch

    def fit(self, callbacks: Sequence[TrainingCallback]) -> None:
        """Train until `epochs` are done, validation loss has not improved for `patience` epochs or a callback
        raised StopTraining."""
        while not self.tracker.finished:
            epoch = self.tracker.epoch + 1
            start = time.perf_counter()
            with naming_out_of_memory(self.experiment, self.device, f"epoch {epoch} (training)"):
                train_loss, samples = self._train_one_epoch(epoch, callbacks)
            train_seconds = time.perf_counter() - start
            with naming_out_of_memory(self.experiment, self.device, f"epoch {epoch} (validation)"):
                score = evaluate(self.forward, self.data.val, features=self.features,
                                 batch_size=self.config.batch_size, limit=self.config.limit_eval_batches,
                                 bf16=self.config.bf16)
            report, improved = self.tracker.end_epoch(epoch, train_loss, score, time.perf_counter() - start,
                                                      samples / train_seconds, self.state)
            if improved:
                self.best_weights = clone_tensors(self.model.state_dict())
            self._set_learning_rate(self.tracker.learning_rate)
            if notify_epoch(callbacks, report):
                self.tracker.stopped = True

    def _train_one_epoch(self, epoch: int, callbacks: Sequence[TrainingCallback]) -> tuple[float, int]:
        """One pass over the shuffled training windows; (mean batch loss incl. aux loss, windows seen)."""
        self.model.train()
        total = torch.zeros((), device=self.device)
        batches = samples = 0
        steps = math.ceil(self.data.train.num_windows / self.config.batch_size)
        if self.config.limit_train_batches is not None:
            steps = min(steps, self.config.limit_train_batches)
        for batch in self.data.train.iter_batches(self.config.batch_size, shuffle=True, generator=self.generator,
                                                  limit=self.config.limit_train_batches):
            # Accumulated on the device: one host synchronisation per epoch, in .item() below.
            total += self.step(batch)
            batches += 1
            samples += batch.x.shape[0]
            for callback in callbacks:
                callback.on_batch(epoch, batches, steps)
        if batches == 0:
            raise SettingError(f"{self.experiment.dataset} has no training windows for {{setting}} "
                               f"{self.experiment.seq_len} + pred_len {self.experiment.pred_len}; use shorter windows",
                               setting="seq_len")
        return (total / batches).item(), samples

    def _set_learning_rate(self, learning_rate: float) -> None:
        for group in self.optimizer.param_groups:
            if torch.is_tensor(group["lr"]):
                group["lr"].fill_(learning_rate)  # in place: a captured CUDA step reads this memory
            else:
                group["lr"] = learning_rate

    def state(self) -> dict[str, Any]:
        """A checkpoint of everything `load_state` needs; plain tensors and containers (torch.load weights_only)."""
        return {
            **self.tracker.state(),
            "model": clone_tensors(self.model.state_dict(), "cpu"),
            "best_model": clone_tensors(self.best_weights, "cpu"),
            "optimizer": clone_tensors(self.optimizer.state_dict(), "cpu"),
            "rng": _rng_state(self.generator),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue from a `state()` checkpoint: same epoch counter, weights, optimiser, schedule, patience, RNGs."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:
            if torch.is_tensor(group["lr"]):  # the checkpoint holds it on the CPU; the fused CUDA step reads it there
                group["lr"] = group["lr"].to(self.device)
        self.best_weights = clone_tensors(state["best_model"], self.device)
        self.tracker.load_state(state)
        self._set_learning_rate(self.tracker.learning_rate)
        _load_rng_state(state["rng"], self.generator)


@contextmanager
def naming_out_of_memory(experiment: Experiment, device: torch.device, where: str) -> Iterator[None]:
    """Turns torch.OutOfMemoryError raised inside into GpuOutOfMemoryError naming the run and `where`."""
    try:
        yield
    except torch.OutOfMemoryError as error:
        share = ""
        if device.type == "cuda":
            # Gives the allocator's unused cache back to the GPU, which other trials or runs may be sharing. The
            # failed pass's own tensors stay referenced by the chained traceback until the caller drops the error.
            torch.cuda.empty_cache()
            # The index, not the device: resolve_device("auto") gives an index-less "cuda", which this call refuses.
            fraction = torch.cuda.get_per_process_memory_fraction(device.index)
            if fraction < 1:
                share = f" with a GPU share of {fraction:g}"
        batch_size = experiment.train.batch_size
        raise GpuOutOfMemoryError(
            f"{experiment.model} on {experiment.dataset} (pred_len {experiment.pred_len}) ran out of GPU memory in "
            f"{where} at batch size {batch_size}{share}; lower {{setting}} "
            f"(e.g. {{setting}}={max(1, batch_size // 2)}) "
            "or give the run a larger GPU share", setting="train.batch_size"
        ) from error


def scheduled_learning_rate(config: TrainConfig, epoch: int) -> float:
    """The learning rate set after `epoch` (1-based) finishes, as TSLib's adjust_learning_rate(optimizer, epoch)."""
    if config.lradj == "type1":
        return config.learning_rate * 0.5 ** (epoch - 1)
    if config.lradj == "cosine":
        return config.learning_rate / 2 * (1 + math.cos(epoch / config.epochs * math.pi))
    return config.learning_rate


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    numpy_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(numpy_state[1].astype(np.int64)), "pos": int(numpy_state[2]),
                  "has_gauss": int(numpy_state[3]), "cached_gaussian": float(numpy_state[4])},
        "torch": torch.get_rng_state(),
        "shuffle": generator.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _load_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    random.setstate(_as_tuples(state["python"]))
    numpy_state = state["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    generator.set_state(state["shuffle"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(value: Any) -> Any:
    """random.setstate needs tuples all the way down; a checkpoint round trip may have turned them into lists."""
    return tuple(_as_tuples(item) for item in value) if isinstance(value, (list, tuple)) else value


def clone_tensors(value: Any, device: torch.device | str | None = None) -> Any:
    """A deep copy of nested dicts/lists/tuples of tensors, detached, optionally moved to `device`."""
    if torch.is_tensor(value):
        copied = value.detach().clone()
        return copied.to(device) if device is not None else copied
    if isinstance(value, dict):
        return type(value)((key, clone_tensors(item, device)) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(clone_tensors(item, device) for item in value)
    return copy.deepcopy(value)
