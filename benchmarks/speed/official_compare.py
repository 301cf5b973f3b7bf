"""The official MixMamba code beside MixBench's MixMamba: the same configurations, seeds and GPU.

The official code (github.com/KhaledAlkilane89/MixMamba) is read from a folder given on the command line (never
part of this repository) and runs unchanged except for what today's environment needs (ENVIRONMENT_CHANGES below;
results/official/README.md repeats them). Subcommands, each writing one JSON file:

  official  the official run.py for one dataset, horizon and seed (its script's flags), with its own data loaders,
            training loop, early stopping and test; test MSE/MAE, parameter count, per-epoch times
  ours      MixBench's engine (`run_experiment`) with the recipe that matches that script, same seed
  speed     alone on the GPU: ms per training step of both models on the same 8 batches (forward, loss, backward,
            AdamW step; data loading excluded), official with and without causal_conv1d, ours eager, whole-step CUDA
            graph and bf16, each scan backend. s/epoch comes from `official --train-epochs 2 --skip-test` and
            `ours --epochs 2`, each run alone
  parity    the official Model and ours holding the same weights: forecasts, auxiliary loss and every gradient
  table     gathers those JSON files into results/official/ (comparison.csv, comparison.json)

`official` and `ours` write their JSON file also when stopped: on SIGTERM (a `timeout` running out) or an error they
write what they have (the per-epoch rows so far) with "completed": false, "cut" and "error", and exit with status 1.

    python -m benchmarks.speed.official_compare official --official-dir OFFICIAL --data-dir DATA --seed 2021 \
        --out official_ETTh1_192_2021.json
    python -m benchmarks.speed.official_compare ours --data-dir DATA --seed 2021 --out ours_ETTh1_192_2021.json
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import platform
import re
import signal
import statistics
import sys
import time
import traceback
from argparse import Namespace
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

ENVIRONMENT_CHANGES = (
    "numpy 2 removed the alias np.Inf that utils/tools.py's EarlyStopping reads: np.Inf = np.inf is set first",
    "sktime, patoolib and torcheval are imported at module level (data_provider/data_loader.py, data_provider/m4.py, "
    "exp/exp_classification.py) but used only for classification and M4 data: stub modules that raise when called",
    "run.py hard-codes fix_seed = 47: its source runs with that one literal replaced by the requested seed",
    "mamba_ssm 2.3.2.post1 built for sm_90 (requirements.txt pins 2.2.2), torch 2.11 / CUDA 13 (pins torch 2.4), "
    "einops, beartype 0.18.5, colt5-attention 0.11.0, local-attention 1.9.1 as pinned or nearest; causal_conv1d is "
    "not in requirements.txt, so the accuracy runs hide it (mamba_ssm then runs its unfused path, as after "
    "`pip install -r requirements.txt`); the speed runs time both",
    "--root_path points at the benchmark data; checkpoints, results and test plots go to a scratch folder",
)
SCRIPT_FLAGS = {  # scripts/long_term_forecast/ETT_script/mixmamba_ETTh1.sh, verbatim but for root_path/pred_len
    "task_name": "long_term_forecast", "is_training": "1", "model": "mixmamba", "features": "M",
    "seq_len": "96", "label_len": "48", "d_model": "64", "des": "Exp", "itr": "1", "learning_rate": "0.001",
    "train_epochs": "10", "batch_size": "32", "num_experts": "2", "d_conv": "4", "d_state": "16", "expand": "2",
    "moe_hidden_factor": "2",
}
DATASETS = {  # dataset -> flags; weather has no official script: the ETTh1 script's settings (as our recipes)
    "ETTh1": {"data": "ETTh1", "root": "ETT-small", "data_path": "ETTh1.csv", "enc_in": "7"},
    "weather": {"data": "custom", "root": "weather", "data_path": "weather.csv", "enc_in": "21"},
}
STUBS = {
    "sktime/__init__.py": "",
    "sktime/datasets.py": "def load_from_tsfile_to_dataframe(*args, **kwargs):\n"
                          "    raise NotImplementedError('sktime stub: classification data is not used here')\n",
    "patoolib/__init__.py": "def extract_archive(*args, **kwargs):\n"
                            "    raise NotImplementedError('patoolib stub: M4 data is not used here')\n",
    "torcheval/__init__.py": "",
    "torcheval/metrics/__init__.py": "class BinaryAUROC:\n    def __init__(self, *args, **kwargs):\n"
                                     "        raise NotImplementedError('torcheval stub: classification only')\n",
    "torcheval/metrics/functional.py": "def multiclass_f1_score(*args, **kwargs):\n"
                                       "    raise NotImplementedError('torcheval stub: classification only')\n",
}
SEED_LITERAL = "fix_seed = 47"


class Cut(BaseException):
    """SIGTERM arrived (a `timeout` ran out): the run stops and writes what it has. A BaseException, so that no
    `except Exception` on the way swallows it."""


_CUT: list[float] = []  # when SIGTERM arrived, once it has


def raise_cut_on_sigterm() -> None:
    """From now on SIGTERM raises Cut in this process (once; later ones are ignored while the partial result is
    written). DataLoader workers forked from it, which inherit the handler, just exit."""
    main_pid = os.getpid()

    def handler(signum: int, frame: Any) -> None:
        if os.getpid() != main_pid:
            os._exit(128 + signum)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _CUT.append(time.time())
        raise Cut("SIGTERM (the run's time limit)")

    signal.signal(signal.SIGTERM, handler)


def _stopped(error: BaseException | None) -> dict[str, Any]:
    """The fields that say whether a run finished, and if not, why."""
    if error is None:
        return {"completed": True, "cut": False}
    return {"completed": False, "cut": bool(_CUT) or isinstance(error, Cut), "error": repr(error),
            "traceback": "".join(traceback.format_exception(type(error), error, error.__traceback__, limit=8))}


# ---------------------------------------------------------------------------------------------- platform helpers

def _experiment(data_dir: Path, dataset: str, pred_len: int, seed: int = 2021, device: str = "cuda",
                settings: dict[str, Any] | None = None) -> Any:
    """The MixMamba recipe's Experiment for (dataset, pred_len) with `settings` (`model.x` / `train.x`) on top."""
    from benchmarks.data.files import resolve_dataset
    from benchmarks.experiment import resolve_experiment

    data = resolve_dataset(dataset, data_dir, download=False)
    return resolve_experiment("mixmamba", data, pred_len=pred_len, seed=seed, settings=settings or {}, device=device)


def _forecast_data(data_dir: Path, dataset: str, pred_len: int, device: str) -> Any:
    from benchmarks.data.files import resolve_dataset
    from benchmarks.data.protocol import DataProtocol, load_forecast_data

    return load_forecast_data(resolve_dataset(dataset, data_dir, download=False),
                              DataProtocol(seq_len=96, pred_len=pred_len), device=device)


# ------------------------------------------------------------------------------------------------ the official code

def official_argv(dataset: str, pred_len: int, data_dir: Path, train_epochs: int | None = None) -> list[str]:
    """run.py's flags for `dataset` at `pred_len`: the ETTh1 script's, with our data folder."""
    entry = DATASETS[dataset]
    flags = dict(SCRIPT_FLAGS)
    flags.update(model_id=f"{dataset}_96_{pred_len}", data=entry["data"], pred_len=str(pred_len),
                 root_path=str(Path(data_dir) / entry["root"]) + "/", data_path=entry["data_path"],
                 enc_in=entry["enc_in"], c_out=entry["enc_in"])
    if train_epochs is not None:
        flags["train_epochs"] = str(train_epochs)
    return [item for key, value in flags.items() for item in (f"--{key}", value)]


def _write_stubs(folder: Path) -> Path:
    for relative, text in STUBS.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return folder


class _Tee(io.TextIOBase):
    def __init__(self, *streams: Any) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


def _prepare_official_imports(official_dir: Path, scratch: Path, causal_conv1d: bool) -> None:
    """The environment changes that must precede the official code's imports (idempotent)."""
    if not causal_conv1d and "mamba_ssm" not in sys.modules:
        sys.modules["causal_conv1d"] = None  # type: ignore[assignment]  # `import causal_conv1d` now raises
    if not hasattr(np, "Inf"):
        np.Inf = np.inf  # type: ignore[attr-defined]
    stubs = _write_stubs(scratch / "_stubs")
    for folder in (str(stubs), str(official_dir)):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    use_causal_conv1d(causal_conv1d)


_CAUSAL_CONV1D_FN: list[Any] = []


def use_causal_conv1d(enabled: bool) -> None:
    """Make mamba_simple.Mamba run as with causal_conv1d installed (fused mamba_inner_fn) or without it (torch conv1d
    + selective_scan_fn): its forward reads the module global causal_conv1d_fn at call time."""
    import mamba_ssm.modules.mamba_simple as mamba_simple

    if not _CAUSAL_CONV1D_FN:
        _CAUSAL_CONV1D_FN.append(mamba_simple.causal_conv1d_fn)
    if enabled and _CAUSAL_CONV1D_FN[0] is None:
        raise RuntimeError("causal_conv1d is not installed (or was hidden before mamba_ssm was imported)")
    mamba_simple.causal_conv1d_fn = _CAUSAL_CONV1D_FN[0] if enabled else None


def run_official(official_dir: Path, data_dir: Path, dataset: str, pred_len: int, seed: int, scratch: Path,
                 causal_conv1d: bool = False, train_epochs: int | None = None, skip_test: bool = False) -> dict:
    """Runs the official run.py in this process (cwd = scratch) and returns what it printed, parsed, plus timings.

    Timers wrap Exp_Long_Term_Forecast.train / vali / test from outside (they change nothing they time).
    train_epochs and skip_test are for speed runs only; accuracy runs leave them at the script's values.
    """
    official_dir, data_dir = official_dir.resolve(), data_dir.resolve()
    scratch.mkdir(parents=True, exist_ok=True)
    _prepare_official_imports(official_dir, scratch, causal_conv1d)
    os.chdir(scratch)
    import exp.exp_long_term_forecasting as experiment  # the official module, from official_dir
    import mamba_ssm.modules.mamba_simple as mamba_simple

    timings: dict[str, list[float]] = {"train": [], "vali": [], "test": []}
    exp_class = experiment.Exp_Long_Term_Forecast
    built: list[nn.Module] = []
    build_model = exp_class._build_model

    def keep_model(self: Any) -> nn.Module:
        built.append(build_model(self))
        return built[-1]

    exp_class._build_model = keep_model

    def timed(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            torch.cuda.synchronize()
            began = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                torch.cuda.synchronize()
                timings[name].append(time.perf_counter() - began)
        return wrapper

    exp_class.train = timed("train", exp_class.train)
    exp_class.vali = timed("vali", exp_class.vali)
    exp_class.test = timed("test", (lambda self, setting, test=0: None) if skip_test else exp_class.test)

    source = (official_dir / "run.py").read_text()
    if source.count(SEED_LITERAL) != 1:
        raise RuntimeError(f"{official_dir / 'run.py'} has {source.count(SEED_LITERAL)} '{SEED_LITERAL}' lines, not 1")
    source = source.replace(SEED_LITERAL, f"fix_seed = {int(seed)}")
    argv = official_argv(dataset, pred_len, data_dir, train_epochs)
    captured = io.StringIO()
    saved_argv, saved_stdout = sys.argv, sys.stdout
    sys.argv, sys.stdout = ["run.py", *argv], _Tee(sys.stdout, captured)
    torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    stopped_by: BaseException | None = None
    try:
        exec(compile(source, str(official_dir / "run.py"), "exec"), {"__name__": "__main__",
                                                                      "__file__": str(official_dir / "run.py")})
    except BaseException as error:  # noqa: BLE001 - cut (SIGTERM) or crashed: keep what it printed so far
        stopped_by = error
    finally:
        sys.argv, sys.stdout = saved_argv, saved_stdout
    total = time.perf_counter() - began
    if stopped_by is not None:
        print(f"official run stopped: {stopped_by!r}", file=sys.stderr, flush=True)
    result = parse_official_output(captured.getvalue())
    steps = result.get("steps_per_epoch")
    epochs = []
    for index, epoch in enumerate(result.pop("epochs")):
        vali_seconds = timings["vali"][index] if index < len(timings["vali"]) else None
        epoch["vali_seconds"] = vali_seconds
        if vali_seconds is not None:
            epoch["epoch_seconds"] = epoch["train_seconds"] + vali_seconds
        if steps:
            epoch["ms_per_step"] = 1e3 * epoch["train_seconds"] / steps
        epochs.append(epoch)
    if built:
        named = dict(built[-1].named_parameters())
        result["params_total"] = sum(p.numel() for p in named.values())
        result["params_unused"] = sum(p.numel() for name, p in named.items()
                                      if name.startswith(("moe.gate.mamba.", "projection.")))
        result["params_used"] = result["params_total"] - result["params_unused"]
    result.update(
        kind="official", dataset=dataset, pred_len=pred_len, seed=seed, argv=argv, epochs=epochs,
        causal_conv1d=mamba_simple.causal_conv1d_fn is not None,
        mamba_path="fused mamba_inner_fn" if mamba_simple.causal_conv1d_fn is not None
        else "unfused: torch conv1d + selective_scan_fn",
        train_call_seconds=timings["train"], test_seconds=timings["test"][0] if timings["test"] else None,
        test_skipped=skip_test, total_seconds=total, peak_memory_mb=torch.cuda.max_memory_allocated() / 2**20,
        environment_changes=list(ENVIRONMENT_CHANGES), environment=environment(), **_stopped(stopped_by),
    )
    return result


def parse_official_output(text: str) -> dict:
    """What run.py prints: parameter count, per-epoch time and losses, early stopping, test MSE/MAE."""
    result: dict[str, Any] = {"epochs": []}
    params = re.findall(r"Total number of parameters: (\d+)", text)
    if params:
        result["params_printed"] = int(params[0])
    for number, seconds in re.findall(r"Epoch: (\d+) cost time: ([0-9.eE+-]+)", text):
        result["epochs"].append({"epoch": int(number), "train_seconds": float(seconds)})
    for number, steps, train_loss, vali_loss in re.findall(
            r"Epoch: (\d+), Steps: (\d+) \| Train Loss: ([0-9.eE+-]+) Vali Loss: ([0-9.eE+-]+)", text):
        result["steps_per_epoch"] = int(steps)
        for epoch in result["epochs"]:
            if epoch["epoch"] == int(number):
                epoch.update(train_loss=float(train_loss), vali_loss=float(vali_loss))
    # early_stopping() runs right after the "Epoch: N, Steps" line: a decrease printed then belongs to epoch N
    best, epoch_number = None, 0
    for line in text.splitlines():
        found = re.match(r"Epoch: (\d+), Steps", line)
        if found:
            epoch_number = int(found.group(1))
        if line.startswith("Validation loss decreased"):
            best = epoch_number
    result["best_epoch"] = best
    result["early_stopped"] = "Early stopping" in text
    speeds = [float(value) for value in re.findall(r"speed: ([0-9.eE+-]+)s/iter", text)]
    if speeds:
        result["speed_s_per_iter_printed"] = speeds
    # test(): 'test shape: (N, 1, pred_len, C) ...' then, reshaped, '(N, pred_len, C) ...': N windows at batch 1
    shapes = re.findall(r"test shape: \((\d+), (\d+), (\d+)\) ", text)
    if shapes:
        result["test_windows"] = int(shapes[-1][0])
    metrics = re.findall(r"mse:([0-9.eE+-]+), mae:([0-9.eE+-]+)", text)
    if metrics:
        result["test_mse"], result["test_mae"] = float(metrics[-1][0]), float(metrics[-1][1])
    return result


def official_namespace(dataset: str, pred_len: int) -> Namespace:
    """The args the official Model reads, as run.py parses the ETTh1 script's flags (defaults where unset)."""
    enc_in = int(DATASETS[dataset]["enc_in"])
    return Namespace(task_name="long_term_forecast", seq_len=96, label_len=48, pred_len=pred_len, use_norm=True,
                     d_model=64, dropout=0.1, num_experts=2, num_gates=2, moe_hidden_factor=2, enc_in=enc_in,
                     c_out=enc_in, embed="timeF", freq="h", d_state=16, d_conv=4, expand=2)


def official_model(official_dir: Path, scratch: Path, dataset: str, pred_len: int, seed: int,
                   causal_conv1d: bool) -> nn.Module:
    _prepare_official_imports(official_dir.resolve(), scratch, causal_conv1d)
    from models import mixmamba as official_module  # the official models/mixmamba.py

    torch.manual_seed(seed)
    return official_module.Model(official_namespace(dataset, pred_len)).float().cuda()


# ----------------------------------------------------------------------------------------------------------- ours

@contextlib.contextmanager
def official_balance_mask() -> Iterator[None]:
    """Ours with the official code's balance loss (an experiment, not MixBench's model).

    In the official layers/st_moe.py, `mask_1 = mask[0]` is a view of `mask`, which is later multiplied in place by
    the capacity test (`mask[n] *= (position_in_expert < expert_capacity_f)`). So the official balance loss's
    first-choice density counts only first choices that got a slot; mixmamba.router counts every first choice.
    Inside this context TopKRouter's balance loss is recomputed the official way (same logits, same gates).
    """
    from mixmamba.router import Routing, TopKRouter

    original = TopKRouter.forward

    def forward(self: Any, x: torch.Tensor, route_draws: torch.Tensor | None = None,
                noise_draws: torch.Tensor | None = None) -> Any:
        routing = original(self, x, route_draws, noise_draws)
        if not self.training or self.noise > 0:
            return routing
        logits = self.gate(x)  # (G, n, E)
        raw_gates = logits.softmax(dim=-1)
        first = nn.functional.one_hot(raw_gates.argmax(dim=-1), self.num_experts).to(x.dtype)  # (G, n, E)
        slot = first.cumsum(dim=1) - first  # first choices take slots 0.. in sequence order
        kept_first = first * (slot < self.capacity(x.shape[1])).to(x.dtype)
        balance = (raw_gates.mean(dim=1) * kept_first.mean(dim=1)).mean() * float(self.num_experts**2)
        aux = self.balance_loss_coef * balance + self.z_loss_coef * routing.z_loss
        return Routing(routing.request_slots, routing.request_gates, balance, routing.z_loss, aux, routing.stats)

    TopKRouter.forward = forward
    try:
        yield
    finally:
        TopKRouter.forward = original


def run_ours(data_dir: Path, dataset: str, pred_len: int, seed: int, bf16: bool = False,
             scan_backend: str | None = None, epochs: int | None = None, device: str = "cuda",
             official_balance: bool = False) -> dict:
    """MixBench's engine on the MixMamba recipe for (dataset, pred_len), no tracking callbacks but one that prints
    each epoch's row (so that a cut run's log and partial result still hold its epochs)."""
    from benchmarks.training.callbacks import TrainingCallback
    from benchmarks.training.engine import run_experiment

    rows: list[dict[str, Any]] = []

    class EpochRows(TrainingCallback):
        def on_epoch(self, report: Any) -> None:
            rows.append(dict(report.row()))
            print(f"ours epoch {report.epoch}: " + " ".join(f"{k} {v:.6g}" for k, v in report.row().items()
                                                         if isinstance(v, (int, float))), flush=True)

    settings: dict[str, Any] = {"model.scan_backend": scan_backend} if scan_backend else {}
    if bf16:
        settings["train.bf16"] = True
    if epochs is not None:
        settings["train.epochs"] = epochs
    experiment = _experiment(data_dir, dataset, pred_len, seed, device, settings)
    if device != "cpu":
        torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    result, stopped_by = None, None
    try:
        with official_balance_mask() if official_balance else contextlib.nullcontext():
            result = run_experiment(experiment, callbacks=[EpochRows()])
    except BaseException as error:  # noqa: BLE001 - cut (SIGTERM) or crashed: keep the epochs so far
        stopped_by = error
        print(f"ours run stopped: {error!r}", file=sys.stderr, flush=True)
    total = time.perf_counter() - began
    model = experiment.build_model()
    batch_size = experiment.train.batch_size
    from mixmamba.scan import auto_scan_choices

    finished: dict[str, Any] = dict.fromkeys(("test_mse", "test_mae", "best_epoch", "epochs_run", "best_val_loss",
                                              "test_windows", "test_windows_total"))
    if result is not None:
        finished.update(test_mse=result.test_mse, test_mae=result.test_mae, best_epoch=result.best_epoch,
                        epochs_run=result.epochs_run, best_val_loss=result.best_val_loss,
                        test_windows=result.test_windows, test_windows_total=result.test_windows_total)
    return dict(
        kind="ours", dataset=dataset, pred_len=pred_len, seed=seed, bf16=bf16, scan_backend=scan_backend or "auto",
        official_balance=official_balance, **finished, params=sum(p.numel() for p in model.parameters()),
        batch_size=batch_size, epochs=[dict(row) for row in result.history] if result is not None else rows,
        total_seconds=total, **_stopped(stopped_by),
        peak_memory_mb=torch.cuda.max_memory_allocated() / 2**20 if device != "cpu" else None,
        model_config=experiment.model_config_dict(), train_config=asdict(experiment.train),
        auto_choices=[asdict(choice) for choice in auto_scan_choices()],
        environment=environment(),
    )


def add_train_seconds(result: dict, train_windows: int) -> dict:
    """Each epoch's training seconds and ms/step from its samples_per_s (the engine logs windows / train seconds)."""
    steps = -(-train_windows // result["batch_size"])
    for row in result["epochs"]:
        if row.get("samples_per_s"):
            row["train_seconds"] = train_windows / row["samples_per_s"]
            row["ms_per_step"] = 1e3 * row["train_seconds"] / steps
    result["steps_per_epoch"] = steps
    result["train_windows"] = train_windows
    return result


def train_windows(data_dir: Path, dataset: str, pred_len: int) -> int:
    return int(_forecast_data(data_dir, dataset, pred_len, "cpu").train.num_windows)


# ---------------------------------------------------------------------------------------------------------- speed

def _batches(data_dir: Path, dataset: str, pred_len: int, count: int = 8, batch_size: int = 32) -> list[Any]:
    data = _forecast_data(data_dir, dataset, pred_len, "cuda")
    generator = torch.Generator().manual_seed(0)
    return [data.train.batch(torch.randperm(data.train.num_windows, generator=generator)[:batch_size].cuda())
            for _ in range(count)]


def time_steps(step: Callable[[Any], Any], batches: list[Any], warmup: int = 20, steps: int = 100) -> dict:
    """Median / min ms of `step(batch)` over `steps` calls after `warmup`, cycling the batches; CUDA events."""
    for index in range(warmup):
        step(batches[index % len(batches)])
    torch.cuda.synchronize()
    events = []
    for index in range(steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step(batches[index % len(batches)])
        end.record()
        events.append((start, end))
    torch.cuda.synchronize()
    times = sorted(start.elapsed_time(end) for start, end in events)
    return {"median_ms": statistics.median(times), "min_ms": times[0], "p90_ms": times[int(0.9 * len(times)) - 1],
            "steps": steps, "warmup": warmup}


def official_step(model: nn.Module, label_len: int, pred_len: int) -> Callable[[Any], torch.Tensor]:
    """The official training loop's body (exp_long_term_forecasting.train, use_amp off), data already on the GPU."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    criterion = nn.L1Loss()
    model.train()

    def step(batch: Any) -> torch.Tensor:
        optimizer.zero_grad()
        dec_inp = torch.zeros_like(batch.y[:, -pred_len:, :]).float()
        dec_inp = torch.cat([batch.x[:, -label_len:, :], dec_inp], dim=1).float()  # unused by MixMamba
        outputs, aux_loss = model(batch.x, batch.x_mark, dec_inp, None)
        outputs = outputs[:, -pred_len:, 0:]
        loss = criterion(outputs, batch.y[:, -pred_len:, 0:]) + aux_loss
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def ours_step(data_dir: Path, dataset: str, pred_len: int, scan_backend: str, graph: bool,
              bf16: bool) -> tuple[Callable, int]:
    """The engine's TrainStep on the recipe's model and optimiser (eager, or the whole step as one CUDA graph)."""
    from benchmarks.training.step import TrainStep, make_optimizer

    experiment = _experiment(data_dir, dataset, pred_len,
                             settings={"model.scan_backend": scan_backend, "train.bf16": bf16})
    torch.manual_seed(0)
    model = experiment.build_model().cuda().train()
    config = experiment.train
    optimizer = make_optimizer(model, config, torch.device("cuda"))
    step = TrainStep(model, optimizer, config.loss, slice(None), config.batch_size, bf16=bf16, cuda_graph=graph)
    return step, sum(p.numel() for p in model.parameters())


def run_speed(official_dir: Path, data_dir: Path, dataset: str, pred_len: int, scratch: Path) -> dict:
    """ms/step of both models' training step on the same batches; run it with nothing else on the GPU."""
    report: dict[str, Any] = {"dataset": dataset, "pred_len": pred_len, "steps": {}, "failures": []}
    batches = _batches(data_dir, dataset, pred_len)
    rows: list[tuple[str, Callable[[], tuple[Callable, int]]]] = []
    for cc in (True, False):
        def make(cc: bool = cc) -> tuple[Callable, int]:
            model = official_model(official_dir, scratch, dataset, pred_len, 0, causal_conv1d=cc)
            return official_step(model, 48, pred_len), sum(p.numel() for p in model.parameters())
        rows.append((f"official eager fp32, {'with' if cc else 'without'} causal_conv1d", make))
    from mixmamba.scan import scan_backend_names

    for backend in [name for name in ("mamba_ssm", "triton") if name in scan_backend_names()] + ["auto"]:
        for graph, bf16 in ((False, False), (True, False), (True, True)):
            label = f"ours {'graph' if graph else 'eager'} {'bf16' if bf16 else 'fp32'}, scan {backend}"
            rows.append((label, lambda b=backend, g=graph, h=bf16: ours_step(data_dir, dataset, pred_len, b, g, h)))
    for label, make in rows:
        try:
            step, params = make()
            report["steps"][label] = {**time_steps(step, batches), "params": params,
                                      "graphed": getattr(step, "graphed", False),
                                      "capture_error": getattr(step, "capture_error", None)}
            print(f"{label}: {report['steps'][label]['median_ms']:.2f} ms/step", flush=True)
        except Exception as error:  # noqa: BLE001 - one failing row must not lose the others
            report["failures"].append({"row": label, "error": repr(error), "traceback": traceback.format_exc(limit=5)})
            print(f"FAILED {label}: {error!r}", file=sys.stderr, flush=True)
        torch.cuda.empty_cache()
    report["environment"] = environment()  # after the rows: the kernels are imported by the rows that use them
    return report


# --------------------------------------------------------------------------------------------------------- parity

def copy_official_into_ours(official: nn.Module, ours: nn.Module) -> list[tuple[str, torch.Tensor, Callable]]:
    """Copies the official weights into ours; returns (name, official parameter, ours-gradient getter) pairs."""
    state = official.state_dict()
    pairs: list[tuple[str, torch.Tensor, Callable]] = []
    direct = {"patch_embedding.value_embedding.weight": ours.patch_embedding.value_embedding.weight,
              "moe.gate.to_gates.weight": ours.moe.router.gate.weight,
              "head.linear.weight": ours.head.weight, "head.linear.bias": ours.head.bias}
    official_params = dict(official.named_parameters())
    with torch.no_grad():
        for name, target in direct.items():
            target.copy_(state[name])
            pairs.append((name, official_params[name], lambda t=target: t.grad))
    experts = official.moe.experts.experts
    per_expert = {f"experts.{e}.{key}": value for e, expert in enumerate(experts)
                  for key, value in expert.mamba.state_dict().items()}
    ours.moe.experts.load_per_expert_state_dict(per_expert)
    from mixmamba.experts import MAMBA_PARAMETERS

    layer = ours.moe.experts.layers[0]
    for e, expert in enumerate(experts):
        params = dict(expert.mamba.named_parameters())
        for key, stacked in MAMBA_PARAMETERS.items():
            pairs.append((f"expert{e}.{key}", params[key],
                          lambda s=stacked, e=e: None if getattr(layer, s).grad is None else getattr(layer, s).grad[e]))
    return pairs


def run_parity(official_dir: Path, data_dir: Path, dataset: str, pred_len: int, scratch: Path) -> dict:
    """Official Model vs ours with the official weights, dropout off and every later choice routed (threshold ~0)
    so that no coin flip differs: eval forecasts, train forecasts, aux loss and gradients, per mamba path/backend."""
    batches = _batches(data_dir, dataset, pred_len, count=2)
    report: dict[str, Any] = {"dataset": dataset, "pred_len": pred_len, "cases": {}, "tolerance": 1e-4,
                              "failures": []}
    from mixmamba.scan import scan_backend_names

    cases = [(cc, backend, mask) for cc in (True, False)
             for backend in [name for name in ("mamba_ssm", "triton", "reference") if name in scan_backend_names()]
             for mask in (False, True)]
    for cc, backend, mask in cases:
        key = (f"official {'with' if cc else 'without'} causal_conv1d vs ours scan {backend}"
               + (" + official balance mask" if mask else ""))
        try:
            official = official_model(official_dir, scratch, dataset, pred_len, 0, causal_conv1d=cc)
            experiment = _experiment(data_dir, dataset, pred_len,
                                     settings={"model.scan_backend": backend, "model.router_threshold": 1e-9})
            ours = experiment.build_model().cuda()
            pairs = copy_official_into_ours(official, ours)
            for model in (official, ours):
                for module in model.modules():
                    if isinstance(module, nn.Dropout):
                        module.p = 0.0
            gate = official.moe.gate
            gate.threshold_train[1:] = 1e-9
            gate.threshold_eval[1:] = 1e-9
            case: dict[str, Any] = {"params_official": sum(p.numel() for p in official.parameters()),
                                    "params_official_used": None,
                                    "params_ours": sum(p.numel() for p in ours.parameters())}
            unused = sum(p.numel() for name, p in official.named_parameters()
                         if name.startswith(("moe.gate.mamba.", "projection.")))
            case["params_official_used"] = case["params_official"] - unused
            batch = batches[0]
            official.eval()
            ours.eval()
            with torch.no_grad():
                expected, _ = official(batch.x, batch.x_mark, None, None)
                got, _ = ours(batch.x, batch.x_mark)
            case["eval_forecast"] = relative(got, expected)
            official.train()
            ours.train()
            official.zero_grad()
            ours.zero_grad()
            expected, expected_aux = official(batch.x, batch.x_mark, None, None)
            with official_balance_mask() if mask else contextlib.nullcontext():
                got, got_aux = ours(batch.x, batch.x_mark)
            (nn.functional.l1_loss(expected, batch.y) + expected_aux).backward()
            (nn.functional.l1_loss(got, batch.y) + got_aux).backward()
            case["train_forecast"] = relative(got, expected)
            case["aux_loss"] = relative(got_aux.reshape(1), expected_aux.reshape(1))
            case["gradients"] = {name: relative(get(), param.grad) for name, param, get in pairs}
            named = {"eval_forecast": case["eval_forecast"], "train_forecast": case["train_forecast"],
                     "aux_loss": case["aux_loss"], **{f"d {k}": v for k, v in case["gradients"].items()}}
            worst = max(named.values())
            case["worst"] = worst
            case["worst_at"] = max(named, key=named.get)
            case["aux_official"], case["aux_ours"] = float(expected_aux), float(got_aux)
            case["passed"] = worst <= report["tolerance"]
            report["cases"][key] = case
            print(f"parity {key}: worst {worst:.2e} at {case['worst_at']}; forecasts eval "
                  f"{case['eval_forecast']:.1e} train {case['train_forecast']:.1e}", flush=True)
        except Exception as error:  # noqa: BLE001
            report["failures"].append({"case": key, "error": repr(error),
                                       "traceback": traceback.format_exc(limit=6)})
            print(f"FAILED parity {key}: {error!r}", file=sys.stderr, flush=True)
    return report


def relative(value: torch.Tensor | None, expected: torch.Tensor | None) -> float:
    if value is None or expected is None:
        return float("inf") if (value is None) != (expected is None) else 0.0
    expected = expected.detach().double()
    return ((value.detach().double() - expected).norm() / expected.norm().clamp(min=1e-300)).item()


# ---------------------------------------------------------------------------------------------------------- table

def build_table(inputs: list[Path], out_dir: Path) -> dict:
    """comparison.csv (one row per run) and comparison.json (per dataset/horizon/kind: mean and std over seeds)."""
    runs = []
    for path in inputs:
        data = json.loads(path.read_text())
        if data.get("kind") not in ("official", "ours"):
            continue
        epochs = data.get("epochs", [])
        runs.append({
            "dataset": data["dataset"], "pred_len": data["pred_len"], "code": data["kind"], "seed": data["seed"],
            "variant": _variant(data),
            "test_mse": data.get("test_mse"), "test_mae": data.get("test_mae"),
            "params": data.get("params") if data["kind"] == "ours" else data.get("params_printed"),
            "best_epoch": data.get("best_epoch"), "epochs_run": len(epochs),
            "ms_per_step_median": _median([e.get("ms_per_step") for e in epochs]),
            "s_per_epoch_median": _median([e.get("epoch_seconds") for e in epochs]),
            "train_s_per_epoch_median": _median([e.get("train_seconds") for e in epochs]),
            "total_seconds": data.get("total_seconds"), "file": path.name,
        })
    runs.sort(key=lambda r: (r["dataset"], r["pred_len"], r["code"], r["variant"], r["seed"]))
    out_dir.mkdir(parents=True, exist_ok=True)
    if runs:
        with (out_dir / "comparison.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(runs[0]))
            writer.writeheader()
            writer.writerows(runs)
    groups: dict[str, dict[str, Any]] = {}
    for run in runs:
        key = f"{run['dataset']}/{run['pred_len']}/{run['code']}/{run['variant']}"
        groups.setdefault(key, {"seeds": [], "test_mse": [], "test_mae": []})
        for name in ("seeds", "test_mse", "test_mae"):
            groups[key][name].append(run["seed" if name == "seeds" else name])
    summary = {key: {"seeds": g["seeds"], **{f"{m}_mean": statistics.mean(g[m]) for m in ("test_mse", "test_mae")},
                     **{f"{m}_std": statistics.stdev(g[m]) if len(g[m]) > 1 else 0.0 for m in ("test_mse", "test_mae")}}
               for key, g in groups.items() if all(v is not None for v in g["test_mse"])}
    (out_dir / "comparison.json").write_text(json.dumps({"runs": runs, "summary": summary}, indent=2) + "\n")
    return summary


def _variant(data: dict) -> str:
    if data.get("variant"):
        return str(data["variant"])
    if data["kind"] == "official":
        return "with causal_conv1d" if data.get("causal_conv1d") else "without causal_conv1d"
    mask = " + official balance mask" if data.get("official_balance") else ""
    return ("bf16" if data.get("bf16") else "fp32") + mask


def _median(values: list[Any]) -> float | None:
    present = [v for v in values if isinstance(v, (int, float))]
    return statistics.median(present) if present else None


# ----------------------------------------------------------------------------------------------------------- main

def environment() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name()
    for module in ("mamba_ssm", "causal_conv1d", "triton", "numpy"):
        loaded = sys.modules.get(module)
        info[module] = getattr(loaded, "__version__", "not loaded") if loaded is not None else "not loaded"
    return info


def write(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, default=str) + "\n")


@contextlib.contextmanager
def _kept_cwd() -> Iterator[None]:
    cwd = os.getcwd()
    try:
        yield
    finally:
        os.chdir(cwd)


def _result_line(kind: str, args: argparse.Namespace, result: dict[str, Any], params: Any, windows: str) -> str:
    """The one line a run prints at its end: test MSE/MAE, parameters, test windows, epochs, whether it completed."""
    ending = "completed" if result["completed"] else "NOT completed: " + result["error"]
    return (f"{kind} {args.dataset}-{args.pred_len} seed {args.seed}: MSE {result.get('test_mse')} "
            f"MAE {result.get('test_mae')} params {params} test windows {windows} epochs {len(result['epochs'])} "
            f"{ending}")


def _exit_now_if_cut(result: dict) -> None:
    """A cut run has written its JSON: leave at once (interpreter teardown, DataLoader workers included, can outlast
    the grace period before SIGKILL)."""
    if result.get("cut"):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub: argparse.ArgumentParser, official: bool) -> None:
        if official:
            sub.add_argument("--official-dir", type=Path, required=True, help="a checkout of the official repository")
            sub.add_argument("--scratch", type=Path, default=Path("official-scratch"),
                             help="cwd of the official code: checkpoints/, results/, test_results/")
        sub.add_argument("--data-dir", type=Path, required=True, help="holds ETT-small/ETTh1.csv, weather/weather.csv")
        sub.add_argument("--dataset", choices=sorted(DATASETS), default="ETTh1")
        sub.add_argument("--pred-len", type=int, default=192)
        sub.add_argument("--out", type=Path, required=True)

    sub = commands.add_parser("official", help="run the official run.py")
    common(sub, True)
    sub.add_argument("--seed", type=int, required=True)
    sub.add_argument("--causal-conv1d", action="store_true", help="let mamba_ssm use causal_conv1d (fused path)")
    sub.add_argument("--train-epochs", type=int, help="speed runs only: override the script's 10")
    sub.add_argument("--skip-test", action="store_true", help="speed runs only: do not run the test")
    sub = commands.add_parser("ours", help="run MixBench's engine")
    common(sub, False)
    sub.add_argument("--seed", type=int, required=True)
    sub.add_argument("--bf16", action="store_true")
    sub.add_argument("--scan-backend")
    sub.add_argument("--epochs", type=int, help="speed runs only: override the recipe's 10")
    sub.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke test")
    sub.add_argument("--official-balance", action="store_true",
                     help="experiment: the official code's balance loss (see official_balance_mask)")
    sub = commands.add_parser("speed", help="ms/step of both models, alone on the GPU")
    common(sub, True)
    sub = commands.add_parser("parity", help="official Model vs ours with the same weights")
    common(sub, True)
    sub = commands.add_parser("table", help="gather JSON files into results/official/")
    sub.add_argument("inputs", type=Path, nargs="+")
    sub.add_argument("--out-dir", type=Path, default=Path("results/official"))
    args = parser.parse_args(argv)

    if args.command == "table":
        summary = build_table(args.inputs, args.out_dir)
        for key, row in summary.items():
            print(f"{key}: MSE {row['test_mse_mean']:.4f} ± {row['test_mse_std']:.4f}, "
                  f"MAE {row['test_mae_mean']:.4f} ± {row['test_mae_std']:.4f} (seeds {row['seeds']})")
        return 0
    if not torch.cuda.is_available() and getattr(args, "device", "cuda") != "cpu":
        print(f"official_compare {args.command} needs a CUDA GPU", file=sys.stderr)
        return 2
    if args.command in ("official", "ours"):
        raise_cut_on_sigterm()
    with _kept_cwd():
        if args.command == "official":
            out = args.out.resolve()
            result = run_official(args.official_dir, args.data_dir, args.dataset, args.pred_len, args.seed,
                                  args.scratch.resolve() / f"{args.dataset}_{args.pred_len}_{args.seed}",
                                  causal_conv1d=args.causal_conv1d, train_epochs=args.train_epochs,
                                  skip_test=args.skip_test)
            write(out, result)
            print(_result_line("official", args, result, result.get("params_printed"),
                               str(result.get("test_windows"))), flush=True)
            _exit_now_if_cut(result)
            return 0 if result["completed"] else 1
        elif args.command == "ours":
            result = run_ours(args.data_dir, args.dataset, args.pred_len, args.seed, args.bf16, args.scan_backend,
                              args.epochs, args.device, args.official_balance)
            add_train_seconds(result, train_windows(args.data_dir, args.dataset, args.pred_len))
            write(args.out, result)
            print(_result_line("ours", args, result, result.get("params"),
                               f"{result.get('test_windows')} of {result.get('test_windows_total')}"), flush=True)
            _exit_now_if_cut(result)
            return 0 if result["completed"] else 1
        elif args.command == "speed":
            out = args.out.resolve()
            write(out, run_speed(args.official_dir, args.data_dir, args.dataset, args.pred_len,
                                 args.scratch.resolve() / "speed"))
        elif args.command == "parity":
            out = args.out.resolve()
            report = run_parity(args.official_dir, args.data_dir, args.dataset, args.pred_len,
                                args.scratch.resolve() / "parity")
            write(out, report)
            return 0 if not report["failures"] and all(c["passed"] for c in report["cases"].values()) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
