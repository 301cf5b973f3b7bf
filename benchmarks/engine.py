"""The experiment engine: trains one forecaster on one dataset under the Time-Series-Library protocol and tests it.

Owns training (optimiser, learning-rate schedule, early stopping, resumable state), evaluation (test MSE/MAE over
every window) and the run's artifacts (config.yaml, best weights, plots); MLflow logging lives in benchmarks.tracking.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import random
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np
import torch
import yaml
from torch import nn

from benchmarks.errors import InputError

if TYPE_CHECKING:
    from benchmarks.data import ForecastData, WindowBatch, WindowedSplit
    from benchmarks.tracking import TrackingConfig

logger = logging.getLogger(__name__)

OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("type1", "cosine", "constant")
LOSSES = ("mse", "mae")
VAL_METRICS = ("loss", "mse", "mae")
FEATURES = ("M", "S", "MS")
FORECAST_WINDOWS = 3
# torch.compile mode for TrainConfig.compile. Not "reduce-overhead": the engine captures the whole step (optimiser
# included) in one CUDA graph itself, and Inductor's CUDA graphs cannot nest inside that capture.
COMPILE_MODE = "default"
# Full batches a CUDA step runs eagerly before it captures its graph (optimiser state, workspaces, compiled code).
GRAPH_WARMUP_STEPS = 3


@dataclass
class TrainConfig:
    """How a model is trained. Defaults are Time-Series-Library run.py's; recipes override them per dataset.

    lradj: "type1" halves the rate after every epoch from the second on (TSLib adjust_learning_rate),
      "cosine" follows lr/2 * (1 + cos(pi * epoch / epochs)), "constant" keeps it.
    loss: the forecast loss ("mse" or "mae"); the model's auxiliary loss is always added to it in training,
      validation (early stopping) uses the forecast loss alone, as TSLib's vali().
    val_metric: what validation loss means for early stopping, the kept checkpoint and a search's ranking: "loss"
      (the forecast loss, TSLib), "mse" or "mae". Fixing it lets runs trained with different losses be compared.
    bf16: bfloat16 autocast for the forward passes; the loss, optimiser and weights stay float32.
    compile: torch.compile the model (mode COMPILE_MODE, static shapes): one compilation for training and one for
      evaluation; each pass's last, partial batch runs uncompiled instead of triggering a recompilation.
    limit_train_batches / limit_eval_batches: cap the batches per training epoch / per validation and test pass
      (smoke tests and benchmarks; None runs every window).
    """

    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-4
    optimizer: str = "adam"
    weight_decay: float = 0.0
    lradj: str = "type1"
    patience: int = 3
    loss: str = "mse"
    val_metric: str = "loss"
    bf16: bool = False
    compile: bool = False
    limit_train_batches: int | None = None
    limit_eval_batches: int | None = None


@dataclass
class ExperimentSpec:
    """One experiment: a model on a dataset under a protocol, with a seed.

    Settings come from the model's recipe for (dataset, pred_len) and are overridden by `model_overrides`
    (MixMambaConfig / PatchTSTConfig ... fields) and by training settings: a `train` field counts as an override
    when it differs from the TrainConfig default, and `train_overrides` always wins (use it to force a default
    value, e.g. batch_size=32, over a recipe's choice).
    """

    dataset: str
    model: str
    pred_len: int = 96
    seq_len: int = 96
    features: str = "M"
    target: str = "OT"
    seed: int = 2021
    model_overrides: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    device: str = "auto"
    data_dir: str | None = None
    train_overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class EpochReport:
    """What `on_epoch` gets after each epoch's validation; `state()` is a checkpoint for `resume_state`."""

    epoch: int
    train_loss: float
    val_loss: float  # the watched metric (TrainConfig.val_metric)
    val_mse: float
    val_mae: float
    best_val_loss: float
    learning_rate: float
    seconds: float
    samples_per_s: float
    state: Callable[[], dict[str, Any]]


@dataclass
class ExperimentResult:
    """A finished experiment: resolved configs, early-stopping outcome, test metrics and per-epoch history.

    test_mse / test_mae are on the normalised scale over every test window (or the first limit_eval_batches).
    history rows hold `epoch`, `train_loss`, `val_loss`, `val_mse`, `val_mae`, `lr`, `epoch_seconds`, `samples_per_s`.
    """

    spec: ExperimentSpec
    model_config: dict[str, Any]
    train_config: dict[str, Any]
    best_epoch: int
    best_val_loss: float
    epochs_run: int
    test_mse: float
    test_mae: float
    history: list[dict[str, float]]
    artifact_dir: Path | None
    run_id: str | None
    data_config: dict[str, Any] = field(default_factory=dict)


class NonFiniteLossError(RuntimeError):
    """Training diverged: a training or validation loss was NaN or infinite at the end of an epoch."""


class GpuOutOfMemoryError(RuntimeError):
    """The GPU ran out of memory in a training epoch or an evaluation pass; the message is one line naming the run,
    the epoch, the batch size, the process's GPU share if capped, and the fix. The torch error is its __cause__."""


def resolve_experiment(spec: ExperimentSpec) -> ExperimentSpec:
    """`spec` with the recipe's model and training settings filled in; the spec's own overrides win.

    Idempotent: resolving a resolved spec changes nothing.
    """
    from benchmarks.models import recipe

    if spec.features not in FEATURES:
        raise InputError(f"features {spec.features!r} is unknown; use one of {', '.join(FEATURES)}")
    chosen = recipe(spec.model, spec.dataset, spec.pred_len)
    defaults = asdict(TrainConfig())
    unknown = sorted(set(spec.train_overrides) - set(defaults))
    if unknown:
        raise InputError(f"training setting {unknown[0]!r} is unknown; use one of {', '.join(defaults)}")
    given = {name: value for name, value in asdict(spec.train).items() if value != defaults[name]}
    settings = {**defaults, **chosen.train, **given, **spec.train_overrides}
    train = TrainConfig(**{name: check_train_value(name, settings[name]) for name in defaults})
    return replace(spec, train=train, model_overrides={**chosen.model, **spec.model_overrides})


def resolve_device(name: str) -> torch.device:
    """`auto` -> the first CUDA GPU if there is one, else the CPU; `cpu`, `cuda` or `cuda:N` as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"device {name!r} is unknown; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"device {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name!r}: no CUDA GPU is visible to PyTorch; use --device cpu (or auto)")
    return device


def evaluate(model: nn.Module, split: WindowedSplit, *, features: str, batch_size: int, limit: int | None = None,
             bf16: bool = False, seed: int | None = None) -> tuple[float, float]:
    """(MSE, MAE) of `model` over the windows of `split`: squared / absolute errors summed, divided by their count.

    For MS and S only the target channel (the last) is scored, as the reference code's f_dim = -1.
    seed: draw the pass's random numbers from torch's generator seeded so (the global state is left untouched);
      MixMamba's router flips coins for second choices in eval mode too. `run_experiment` tests with spec.seed.
    """
    mse, mae, _ = _evaluate(model, split, _target_channels(features), batch_size, limit, bf16, seed=seed)
    return mse, mae


def run_experiment(spec: ExperimentSpec, *, on_epoch: Callable[[EpochReport], None] | None = None,
                   resume_state: dict[str, Any] | None = None, artifact_dir: Path | None = None,
                   tracking: TrackingConfig | None = None,
                   on_batch: Callable[[int, int, int], None] | None = None) -> ExperimentResult:
    """Train `spec`'s model with early stopping, restore its best weights, test it and write its artifacts.

    on_epoch: called after every epoch's validation; an exception raised from it stops training (and propagates).
    on_batch: called after every training step with (epoch, step, steps in the epoch), for progress bars; it gets
      no loss, so that nothing waits for the GPU inside an epoch.
    resume_state: an `EpochReport.state()` dict; training continues after that epoch as if never interrupted.
    artifact_dir: where config.yaml, model/weights.safetensors and plots/ go (a new temporary folder if None).
    tracking: when given, one MLflow run is created now, every epoch is logged as it ends, and the run ends
      FINISHED with the test metrics and artifacts, or FAILED if anything raises.
    """
    from benchmarks.data import DataProtocol, load_forecast_data
    from benchmarks.models import build_model

    spec = resolve_experiment(spec)
    device = resolve_device(spec.device)
    _seed_everything(spec.seed)
    protocol = DataProtocol(seq_len=spec.seq_len, pred_len=spec.pred_len, features=spec.features, target=spec.target)
    data = load_forecast_data(spec.dataset, protocol, data_dir=spec.data_dir, device=device)
    spec = replace(spec, dataset=data.dataset)  # the registry's spelling, e.g. "ETTh1" for "etth1"
    model, config = build_model(spec.model, spec.seq_len, spec.pred_len, data.n_channels, spec.model_overrides)
    model.to(device)
    model_config = _plain(asdict(config))
    train_config = asdict(spec.train)
    data_config = run_data_config(spec, data.sha256)

    live = None
    if tracking is not None:
        from benchmarks.tracking import start_run

        live = start_run(tracking, spec, model_config, train_config, data_config)
    try:
        training = _Training(spec, model, data, device)
        if resume_state is not None:
            training.load_state(resume_state)
            if live is not None:
                live.log_epochs(training.history)
        training.fit(on_epoch, on_batch, live)
        model.load_state_dict(training.best_weights)
        target = _target_channels(spec.features)
        with _naming_out_of_memory(spec, device, f"the test after epoch {training.epoch}"):
            test_mse, test_mae, routing = _evaluate(model, data.test, target, spec.train.batch_size,
                                                    spec.train.limit_eval_batches, spec.train.bf16, seed=spec.seed,
                                                    collect_routing=True)
        artifact_dir = Path(artifact_dir) if artifact_dir is not None else Path(tempfile.mkdtemp(prefix="mixbench-"))
        _write_artifacts(artifact_dir, spec, model, model_config, train_config, data_config, data, routing)
        result = ExperimentResult(
            spec=spec, model_config=model_config, train_config=train_config, best_epoch=training.best_epoch,
            best_val_loss=training.best_val_loss, epochs_run=training.epoch, test_mse=test_mse, test_mae=test_mae,
            history=copy.deepcopy(training.history), artifact_dir=artifact_dir,
            run_id=live.run_id if live is not None else None, data_config=data_config,
        )
        if live is not None:
            live.finish(result)
    except KeyboardInterrupt:
        if live is not None:
            live.fail("KILLED")
        raise
    except BaseException:
        if live is not None:
            live.fail()
        raise
    return result


class _Training:
    """The mutable state of one training run: model, optimiser, learning rate, early stopping, RNGs, history."""

    def __init__(self, spec: ExperimentSpec, model: nn.Module, data: ForecastData, device: torch.device) -> None:
        self.spec = spec
        self.config = spec.train
        self.model = model
        self.data = data
        self.device = device
        self.forward = (torch.compile(model, mode=COMPILE_MODE, dynamic=False) if self.config.compile
                        else model)
        self.target = _target_channels(spec.features)
        self.optimizer = make_optimizer(model, self.config, device)
        self.step = TrainStep(model, self.optimizer, self.config.loss, self.target, self.config.batch_size,
                              forward=self.forward, bf16=self.config.bf16, cuda_graph=device.type == "cuda")
        self.generator = torch.Generator().manual_seed(spec.seed)
        self.epoch = 0
        self.learning_rate = self.config.learning_rate
        self.best_val_loss = math.inf
        self.best_epoch = 0
        self.bad_epochs = 0
        self.stopped = False
        self.best_weights = _clone(model.state_dict())
        self.history: list[dict[str, float]] = []

    def fit(self, on_epoch: Callable[[EpochReport], None] | None,
            on_batch: Callable[[int, int, int], None] | None, live: Any) -> None:
        """Train until `epochs` are done or validation loss has not improved for `patience` epochs."""
        while self.epoch < self.config.epochs and not self.stopped:
            epoch = self.epoch + 1
            start = time.perf_counter()
            with _naming_out_of_memory(self.spec, self.device, f"epoch {epoch} (training)"):
                train_loss, samples = self._train_one_epoch(epoch, on_batch)
            train_seconds = time.perf_counter() - start
            with _naming_out_of_memory(self.spec, self.device, f"epoch {epoch} (validation)"):
                val_mse, val_mae, _ = _evaluate(self.forward, self.data.val, self.target, self.config.batch_size,
                                                self.config.limit_eval_batches, self.config.bf16)
            watched = self.config.loss if self.config.val_metric == "loss" else self.config.val_metric
            val_loss = val_mse if watched == "mse" else val_mae
            seconds = time.perf_counter() - start
            if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
                raise NonFiniteLossError(
                    f"{self.spec.model} on {self.spec.dataset} diverged at epoch {epoch} (train loss {train_loss}, "
                    f"validation loss {val_loss}); lower train.learning_rate (now {self.learning_rate:g})"
                )
            used_learning_rate = self.learning_rate
            # TSLib's EarlyStopping counts a tie as an improvement (it only counts score < best_score).
            if val_loss <= self.best_val_loss:
                self.best_val_loss, self.best_epoch, self.bad_epochs = val_loss, epoch, 0
                self.best_weights = _clone(self.model.state_dict())
            else:
                self.bad_epochs += 1
                self.stopped = self.bad_epochs >= self.config.patience
            self.epoch = epoch
            if not self.stopped:
                self._set_learning_rate(scheduled_learning_rate(self.config, epoch))
            row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_mse": val_mse,
                   "val_mae": val_mae, "lr": used_learning_rate, "epoch_seconds": seconds,
                   "samples_per_s": samples / train_seconds}
            self.history.append(row)
            if live is not None:
                live.log_epochs([row])
            if on_epoch is not None:
                on_epoch(EpochReport(epoch=epoch, train_loss=train_loss, val_loss=val_loss, val_mse=val_mse,
                                     val_mae=val_mae, best_val_loss=self.best_val_loss,
                                     learning_rate=used_learning_rate, seconds=seconds,
                                     samples_per_s=row["samples_per_s"], state=self.state))

    def _train_one_epoch(self, epoch: int, on_batch: Callable[[int, int, int], None] | None) -> tuple[float, int]:
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
            if on_batch is not None:
                on_batch(epoch, batches, steps)
        if batches == 0:
            raise InputError(f"{self.spec.dataset} has no training windows for seq_len {self.spec.seq_len} + "
                             f"pred_len {self.spec.pred_len}; use shorter windows")
        return (total / batches).item(), samples

    def _set_learning_rate(self, learning_rate: float) -> None:
        self.learning_rate = learning_rate
        for group in self.optimizer.param_groups:
            if torch.is_tensor(group["lr"]):
                group["lr"].fill_(learning_rate)  # in place: a captured CUDA step reads this memory
            else:
                group["lr"] = learning_rate

    def state(self) -> dict[str, Any]:
        """A checkpoint of everything `load_state` needs; plain tensors and containers (torch.load weights_only)."""
        return {
            "epoch": self.epoch,
            "model": _clone(self.model.state_dict(), "cpu"),
            "best_model": _clone(self.best_weights, "cpu"),
            "optimizer": _clone(self.optimizer.state_dict(), "cpu"),
            "scheduler": {"learning_rate": self.learning_rate},
            "early_stopping": {"best_val_loss": self.best_val_loss, "best_epoch": self.best_epoch,
                               "bad_epochs": self.bad_epochs, "stopped": self.stopped},
            "history": copy.deepcopy(self.history),
            "rng": _rng_state(self.generator),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue from a `state()` checkpoint: same epoch counter, weights, optimiser, schedule, patience, RNGs."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:
            if torch.is_tensor(group["lr"]):  # the checkpoint holds it on the CPU; the fused CUDA step reads it there
                group["lr"] = group["lr"].to(self.device)
        self.best_weights = _clone(state["best_model"], self.device)
        self.epoch = int(state["epoch"])
        self._set_learning_rate(float(state["scheduler"]["learning_rate"]))
        stopping = state["early_stopping"]
        self.best_val_loss = float(stopping["best_val_loss"])
        self.best_epoch = int(stopping["best_epoch"])
        self.bad_epochs = int(stopping["bad_epochs"])
        self.stopped = bool(stopping["stopped"])
        self.history = copy.deepcopy(list(state["history"]))
        _load_rng_state(state["rng"], self.generator)


def make_optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """The training config's Adam / AdamW over `model`'s parameters.

    On CUDA it is the fused implementation, capturable (its step count lives on the device) and its learning rate a
    device tensor, so that the whole step can be captured in a CUDA graph and the schedule still reach it.
    """
    optimizer_class = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    if device.type == "cuda":
        return optimizer_class(model.parameters(), lr=torch.tensor(config.learning_rate, device=device),
                               weight_decay=config.weight_decay, fused=True, capturable=True)
    return optimizer_class(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)


class TrainStep:
    """One training step on a batch: forward, forecast loss plus auxiliary loss, backward, optimiser step.

    loss: "mse" or "mae" over the `target` output channels. forward: the callable to train through (e.g. the
    torch.compile'd model; default `model`). No host synchronisation: the loss stays on the device.

    With `cuda_graph`, full batches (`batch_size` windows) replay one CUDA graph of the whole step, optimiser
    included: one launch per step instead of the hundreds of small kernels Python would issue, which is what bounds
    these models on a GPU. The first GRAPH_WARMUP_STEPS full batches run eagerly on a side stream, as
    torch.cuda.graphs prescribes: they create the optimiser state, library workspaces and compiled code, none of
    which a capture may do. A batch of another size (each epoch's last, partial one) runs eagerly through the
    uncompiled model: a shape seen once per epoch is cheaper to run than to capture or compile. If the capture
    fails, the step logs why (`capture_error`) and stays eager.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss: str, target: slice,
                 batch_size: int, *, forward: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None,
                 bf16: bool = False, cuda_graph: bool = False) -> None:
        self.model = model
        self.forward = forward if forward is not None else model
        self.optimizer = optimizer
        self.criterion = nn.MSELoss() if loss == "mse" else nn.L1Loss()
        self.target = target
        self.batch_size = batch_size
        self.bf16 = bf16
        self.device = next(model.parameters()).device
        self.cuda_graph = cuda_graph and self.device.type == "cuda"
        self.capture_error: str | None = None
        self._warmup_left = GRAPH_WARMUP_STEPS
        self._graph: torch.cuda.CUDAGraph | None = None
        self._static_inputs: tuple[torch.Tensor, ...] = ()
        self._static_loss: torch.Tensor | None = None
        self._side_stream: torch.cuda.Stream | None = None

    @property
    def graphed(self) -> bool:
        """Whether full batches now replay a captured CUDA graph."""
        return self._graph is not None

    def __call__(self, batch: WindowBatch) -> torch.Tensor:
        """The batch's training loss, 0-dim on the device. A graphed step returns the same tensor each time, which
        the next step overwrites: use it before then (adding it to a running total is enough)."""
        if batch.x.shape[0] != self.batch_size:
            return self._eager(self.model, batch.x, batch.y, batch.x_mark)
        if not self.cuda_graph:
            return self._eager(self.forward, batch.x, batch.y, batch.x_mark)
        if self._graph is None:
            if self._warmup_left > 0:
                self._warmup_left -= 1
                return self._eager_on_side_stream(batch)
            self._capture(batch)
            if self._graph is None:
                return self._eager(self.forward, batch.x, batch.y, batch.x_mark)
        for static, fresh in zip(self._static_inputs, (batch.x, batch.y, batch.x_mark)):
            static.copy_(fresh)
        self._graph.replay()
        return self._static_loss

    def _loss(self, forward: Callable[..., tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor, y: torch.Tensor,
              x_mark: torch.Tensor) -> torch.Tensor:
        # No autocast weight cache: cached casts must not outlive a graph capture (torch.cuda.graphs docs).
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16, cache_enabled=False):
            forecast, aux_loss = forward(x, x_mark)  # (B, pred_len, C_in), ()
        return self.criterion(forecast[..., self.target].float(), y[..., self.target]) + aux_loss.float()

    def _eager(self, forward: Callable[..., tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor, y: torch.Tensor,
               x_mark: torch.Tensor) -> torch.Tensor:
        if forward is not self.model:
            torch.compiler.cudagraph_mark_step_begin()  # a new iteration for a "reduce-overhead" compiled model
        self.optimizer.zero_grad(set_to_none=True)
        loss = self._loss(forward, x, y, x_mark)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def _eager_on_side_stream(self, batch: WindowBatch) -> torch.Tensor:
        if self._side_stream is None:
            self._side_stream = torch.cuda.Stream(self.device)
        main = torch.cuda.current_stream(self.device)
        self._side_stream.wait_stream(main)
        with torch.cuda.stream(self._side_stream):
            loss = self._eager(self.forward, batch.x, batch.y, batch.x_mark)
        main.wait_stream(self._side_stream)
        return loss

    def _capture(self, batch: WindowBatch) -> None:
        self._static_inputs = tuple(t.clone() for t in (batch.x, batch.y, batch.x_mark))
        # Gradients set to None now are allocated inside the capture, from the graph's own memory pool.
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: Ray Tune trains in a worker thread; other threads' CUDA calls must not void the capture.
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                loss = self._loss(self.forward, *self._static_inputs)
                loss.backward()
                self.optimizer.step()
        except RuntimeError as error:
            self.optimizer.zero_grad(set_to_none=True)
            self.cuda_graph = False
            self.capture_error = str(error).splitlines()[0] if str(error) else type(error).__name__
            logger.warning("CUDA graph capture of the training step failed, training eagerly: %s",
                           self.capture_error)
            return
        self._graph, self._static_loss = graph, loss.detach()


@contextmanager
def _naming_out_of_memory(spec: ExperimentSpec, device: torch.device, where: str) -> Iterator[None]:
    """Turns torch.OutOfMemoryError raised inside into GpuOutOfMemoryError naming `spec`'s run and `where`."""
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
        batch_size = spec.train.batch_size
        raise GpuOutOfMemoryError(
            f"{spec.model} on {spec.dataset} (pred_len {spec.pred_len}) ran out of GPU memory in {where} at batch "
            f"size {batch_size}{share}; lower train.batch_size (e.g. --set train.batch_size={max(1, batch_size // 2)}) "
            "or give the run a larger GPU share (--gpus-per-trial / --gpus-per-run)"
        ) from error


def scheduled_learning_rate(config: TrainConfig, epoch: int) -> float:
    """The learning rate set after `epoch` (1-based) finishes, as TSLib's adjust_learning_rate(optimizer, epoch)."""
    if config.lradj == "type1":
        return config.learning_rate * 0.5 ** (epoch - 1)
    if config.lradj == "cosine":
        return config.learning_rate / 2 * (1 + math.cos(epoch / config.epochs * math.pi))
    return config.learning_rate


def _evaluate(model: Callable[..., tuple[torch.Tensor, torch.Tensor]], split: WindowedSplit, target: slice,
              batch_size: int, limit: int | None, bf16: bool, seed: int | None = None,
              collect_routing: bool = False) -> tuple[float, float, dict[str, np.ndarray] | None]:
    """(MSE, MAE, routing statistics or None) over the split; errors summed in float64 on the device."""
    module = getattr(model, "_orig_mod", model)
    device = next(module.parameters()).device
    if seed is not None:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            return _evaluate(model, split, target, batch_size, limit, bf16, None, collect_routing)
    module.eval()
    squared = torch.zeros((), dtype=torch.float64, device=device)
    absolute = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    routing = _RoutingTally() if collect_routing else None
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for batch in split.iter_batches(batch_size, limit=limit):
            # A compiled model sees full batches only; the last, partial one runs uncompiled (no recompilation).
            forward = model if batch.x.shape[0] == batch_size else module
            forecast, _ = forward(batch.x, batch.x_mark)  # (B, pred_len, C_in)
            error = forecast[..., target].float() - batch.y[..., target]
            squared += error.square().sum(dtype=torch.float64)
            absolute += error.abs().sum(dtype=torch.float64)
            count += error.numel()
            if routing is not None:
                routing.add(module, batch.x.shape[0])
    if count == 0:
        raise InputError(f"a split has no windows to evaluate (limit {limit}); use shorter windows or a larger limit")
    mse, mae = (torch.stack([squared, absolute]) / count).tolist()
    return mse, mae, routing.summary() if routing is not None else None


class _RoutingTally:
    """Window-weighted means of a mixture-of-experts model's per-batch `last_routing` statistics over a pass."""

    NAMES = ("expert_share", "first_choice_share", "dropped_token_rate")

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}  # name -> sum over batches of statistic x windows
        self.windows = 0

    def add(self, model: nn.Module, windows: int) -> None:
        stats = getattr(model, "last_routing", None)
        if stats is None:
            return
        for name in self.NAMES:
            value = getattr(stats, name).double() * windows
            self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.windows += windows

    def summary(self) -> dict[str, np.ndarray] | None:
        """expert_share (E,), first_choice_share (E,), dropped_token_rate (); None for a model without routing."""
        if not self.sums:
            return None
        return {name: (total / self.windows).cpu().numpy() for name, total in self.sums.items()}


def _write_artifacts(directory: Path, spec: ExperimentSpec, model: nn.Module, model_config: dict[str, Any],
                     train_config: dict[str, Any], data_config: dict[str, Any], data: ForecastData,
                     routing: dict[str, np.ndarray] | None) -> None:
    """config.yaml, model/weights.safetensors (the restored best weights), plots/forecast.png, plots/experts.png."""
    from safetensors.torch import save_model

    from benchmarks.plots import plot_expert_usage, plot_forecast

    (directory / "model").mkdir(parents=True, exist_ok=True)
    (directory / "plots").mkdir(parents=True, exist_ok=True)
    config = {"model": spec.model, "dataset": spec.dataset, "seed": spec.seed, "model_config": model_config,
              "train": train_config, "data": data_config}
    (directory / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    save_model(model, str(directory / "model" / "weights.safetensors"),
               metadata={"model": spec.model, "model_config": json.dumps(model_config)})

    target = _target_channels(spec.features)
    evaluated = data.test.num_windows
    if spec.train.limit_eval_batches is not None:
        evaluated = min(evaluated, spec.train.limit_eval_batches * spec.train.batch_size)
    windows = torch.linspace(0, evaluated - 1, FORECAST_WINDOWS).round().long().unique()
    batch = data.test.batch(windows)
    model.eval()
    with torch.no_grad():
        forecast, _ = model(batch.x, batch.x_mark)  # (W, pred_len, C_in)
    names = list(data.columns)[target]
    channels = list(range(len(names)))
    if len(channels) > 3:
        channels = sorted({0, len(channels) // 2, len(channels) - 1})
    plot_forecast(
        history=batch.x[..., target].float().cpu().numpy()[..., channels],
        truth=batch.y[..., target].float().cpu().numpy()[..., channels],
        forecast=forecast[..., target].float().cpu().numpy()[..., channels],
        channel_names=[names[index] for index in channels],
        window_indices=windows.tolist(),
        title=f"{spec.model} on {spec.dataset} (pred_len {spec.pred_len}, normalised scale)",
        path=directory / "plots" / "forecast.png",
    )
    if routing is not None:
        plot_expert_usage(routing["expert_share"], routing["first_choice_share"],
                          float(routing["dropped_token_rate"]),
                          title=f"{spec.model} on {spec.dataset}: routing on the test set",
                          path=directory / "plots" / "experts.png")


def run_data_config(spec: ExperimentSpec, sha256: str) -> dict[str, Any]:
    """The data.* fields a run logs and writes into config.yaml, for a resolved `spec` and its file's sha256."""
    return {"dataset": spec.dataset, "features": spec.features, "target": spec.target, "seq_len": spec.seq_len,
            "pred_len": spec.pred_len, "sha256": sha256}


def run_model_config(spec: ExperimentSpec, enc_in: int) -> dict[str, Any]:
    """The model config a resolved `spec` builds for `enc_in` channels, exactly as the run logs it (its config_hash
    depends on this), without loading data or building the model."""
    from benchmarks.models import model_config

    return _plain(asdict(model_config(spec.model, spec.seq_len, spec.pred_len, enc_in, spec.model_overrides)))


def _target_channels(features: str) -> slice:
    """The scored output channels: all for M, the last (the target) for MS and S, as TSLib's f_dim."""
    return slice(-1, None) if features in ("MS", "S") else slice(None)


def check_train_value(name: str, value: Any) -> Any:
    """`value` for TrainConfig.`name`, converted from text or int where sensible; InputError when it cannot be."""
    try:
        if name in ("epochs", "batch_size", "patience", "limit_train_batches", "limit_eval_batches"):
            if value is None and name.startswith("limit_"):
                return None
            if isinstance(value, bool) or int(value) != float(value) or int(value) < 1:
                raise ValueError
            return int(value)
        if name in ("learning_rate", "weight_decay"):
            number = float(value)
            if isinstance(value, bool) or not math.isfinite(number) or number < 0 or (
                    name == "learning_rate" and number == 0):
                raise ValueError
            return number
        if name in ("bf16", "compile"):
            if not isinstance(value, bool):
                raise ValueError
            return value
        choices = {"optimizer": OPTIMIZERS, "lradj": SCHEDULES, "loss": LOSSES, "val_metric": VAL_METRICS}[name]
        if value not in choices:
            raise ValueError
        return value
    except (TypeError, ValueError):
        expected = {
            "epochs": "a positive integer", "batch_size": "a positive integer", "patience": "a positive integer",
            "limit_train_batches": "a positive integer or null", "limit_eval_batches": "a positive integer or null",
            "learning_rate": "a positive number", "weight_decay": "a number >= 0", "bf16": "true or false",
            "compile": "true or false", "optimizer": " or ".join(OPTIMIZERS), "lradj": " or ".join(SCHEDULES),
            "loss": " or ".join(LOSSES), "val_metric": " or ".join(VAL_METRICS),
        }[name]
        raise InputError(f"train.{name}={value!r} is invalid; set it to {expected}") from None


def _seed_everything(seed: int) -> None:
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


def _clone(value: Any, device: torch.device | str | None = None) -> Any:
    """A deep copy of nested dicts/lists/tuples of tensors, detached, optionally moved to `device`."""
    if torch.is_tensor(value):
        copied = value.detach().clone()
        return copied.to(device) if device is not None else copied
    if isinstance(value, dict):
        return type(value)((key, _clone(item, device)) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_clone(item, device) for item in value)
    return copy.deepcopy(value)


def _plain(value: Any) -> Any:
    """JSON/YAML-friendly copy: tuples become lists, anything unusual its string."""
    return json.loads(json.dumps(value, default=str))

