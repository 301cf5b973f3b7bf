"""GPU performance of training: ms per step, epoch time, memory, compilations and floors per model, scan backend and
step variant; the per-expert loop MixMamba replaces; trials per hour with k trials packed on one GPU; the real search.

    python -m benchmarks.perf --data-dir .devdata --out benchmarks/results/perf_h200.json
    python -m benchmarks.perf --models mixmamba-small --backends triton --pack 1,8 --search-gpus 0.125,1

Every measurement is isolated (an error is recorded and the next one runs) and the JSON is rewritten after each, so a
run cut short keeps what it measured; `--budget-s` skips what would start after that many seconds.
"""
from __future__ import annotations

import argparse
import gc
import itertools
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from benchmarks.data import DataProtocol, ForecastData, WindowBatch, load_forecast_data
from benchmarks.engine import (
    GRAPH_WARMUP_STEPS,
    ExperimentSpec,
    TrainConfig,
    TrainStep,
    evaluate,
    make_optimizer,
    resolve_device,
    resolve_experiment,
    run_experiment,
)
from benchmarks.models import build_model

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results"
DATASET = "weather"
PROTOCOL = DataProtocol(seq_len=96, pred_len=96)
ROTATION = 8  # distinct batches the timed steps cycle through
PATCHTST_REFERENCE_TEST_MSE = 0.177  # TSLib's PatchTST on weather, horizon 96


@dataclass(frozen=True)
class BenchConfig:
    """A benchmarked model: registry name plus overrides of its weather recipe (benchmarks/recipes.yaml)."""

    model: str
    model_overrides: dict[str, Any] = field(default_factory=dict)
    train_overrides: dict[str, Any] = field(default_factory=dict)
    source: str = ""


CONFIGS = {
    "mixmamba-small": BenchConfig("mixmamba", source="official ETTh1 script: d_model 64, 2 experts, top-2, batch 32 "
                                                     "(the weather recipe)"),
    "mixmamba-moe16": BenchConfig("mixmamba", {"d_model": 256, "num_experts": 16, "top_k": 5},
                                  {"batch_size": 16, "learning_rate": 1e-3},
                                  source="official Exchange script: d_model 256, 16 experts, top-5, batch 16"),
    "patchtst": BenchConfig("patchtst", source="TSLib Weather_script/PatchTST.sh"),
    "itransformer": BenchConfig("itransformer", source="TSLib Weather_script/iTransformer.sh"),
    "dlinear": BenchConfig("dlinear", source="TSLib run.py defaults"),
}


@dataclass(frozen=True)
class Variant:
    """How the step runs: eager or torch.compile'd (mode), inside the engine's whole-step CUDA graph or not, bf16."""

    compile_mode: str | None = None
    cuda_graph: bool = True
    bf16: bool = False


VARIANTS = {
    "eager": Variant(cuda_graph=False),
    "graph": Variant(),
    "graph-bf16": Variant(bf16=True),
    "compile-graph": Variant(compile_mode="default"),
    "compile-graph-bf16": Variant(compile_mode="default", bf16=True),
    # Inductor's own CUDA graphs (forward and backward; the optimiser stays eager) instead of the engine's.
    "compile-reduce-overhead": Variant(compile_mode="reduce-overhead", cuda_graph=False),
    "compile-autotune-graph": Variant(compile_mode="max-autotune-no-cudagraphs"),
}
# The rows, in the order they run: what the targets need first. (config, variant, time an epoch)
ROWS = [
    ("mixmamba-small", "graph", True), ("mixmamba-small", "eager", False),
    ("mixmamba-moe16", "graph", True), ("mixmamba-moe16", "eager", False), ("mixmamba-moe16", "graph-bf16", True),
    ("patchtst", "graph-bf16", True), ("patchtst", "graph", True), ("patchtst", "eager", False),
    ("itransformer", "graph", True), ("itransformer", "eager", False),
    ("dlinear", "graph", True), ("dlinear", "eager", False),
    ("mixmamba-small", "graph-bf16", True), ("itransformer", "graph-bf16", True),
]
# Rows that spend a minute or more compiling.
EXTRA_ROWS = [
    ("mixmamba-small", "compile-graph", True), ("mixmamba-small", "compile-reduce-overhead", True),
    ("patchtst", "compile-graph-bf16", True), ("mixmamba-moe16", "compile-graph-bf16", True),
    ("mixmamba-small", "compile-autotune-graph", True),
]
# Where the GPU time of a step goes: (config, variant) profiled kernel by kernel.
PROFILED = [("mixmamba-small", "graph"), ("mixmamba-moe16", "graph"), ("patchtst", "graph-bf16")]
PARTS = ("profile", "rows", "loop", "engine", "pack", "accuracy", "extra", "search")
# Variants beyond eager / graph run with the first backend listed only.
BASE_VARIANTS = ("eager", "graph")


@dataclass
class Settings:
    """Knobs of one benchmark run (the command-line flags)."""

    steps: int = 200
    warmup: int = 20
    step_seconds: float = 3.0
    max_epoch_seconds: float = 25.0
    limit_batches: int | None = None  # smoke tests: caps every epoch's training and evaluation batches


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def environment(device: torch.device) -> dict[str, Any]:
    """The machine and software versions the numbers belong to."""
    info: dict[str, Any] = {
        "device_type": device.type, "torch": torch.__version__, "python": platform.python_version(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update(device=properties.name, cuda=torch.version.cuda, multiprocessors=properties.multi_processor_count,
                    memory_gb=round(properties.total_memory / 1e9, 1))
        try:
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            info["driver"] = None
    else:
        info["device"] = platform.processor() or platform.machine()
    return info


def measure_ceilings(device: torch.device) -> dict[str, float]:
    """Measured rates the floors use: device-to-device copy (bytes read + written) and 8192^3 matrix products."""
    def milliseconds(run: Callable[[], object], repeats: int) -> float:
        run()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = []
        for _ in range(repeats):
            start.record()
            run()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)

    source = torch.randn(2**28, device=device)  # 1 GiB
    target = torch.empty_like(source)
    copy_ms = milliseconds(lambda: target.copy_(source), 10)
    del source, target
    size = 8192
    rates = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
        rates[name] = 2 * size**3 / milliseconds(lambda: a @ b, 5) / 1e9
        del a, b
    torch.cuda.empty_cache()
    return {"copy_tb_s": 2 * 2**30 / copy_ms / 1e9, "matmul_tflops_fp32": rates["fp32"],
            "matmul_tflops_bf16": rates["bf16"], "fp32_matmul_precision": torch.get_float32_matmul_precision()}


def build_case(config: BenchConfig, backend: str | None, data: ForecastData,
               device: torch.device) -> tuple[ExperimentSpec, nn.Module]:
    """The resolved experiment and a freshly initialised model (on `device`) for a benchmark config."""
    overrides = dict(config.model_overrides)
    if backend is not None:
        overrides["scan_backend"] = backend
    spec = resolve_experiment(ExperimentSpec(dataset=DATASET, model=config.model, seq_len=PROTOCOL.seq_len,
                                             pred_len=PROTOCOL.pred_len, device=str(device),
                                             model_overrides=overrides, train_overrides=dict(config.train_overrides)))
    torch.manual_seed(spec.seed)
    model, _ = build_model(spec.model, spec.seq_len, spec.pred_len, data.n_channels, spec.model_overrides)
    return spec, model.to(device)


def step_floor(model: nn.Module, batch: WindowBatch, train: TrainConfig, bf16: bool) -> dict[str, float]:
    """What one training step must do at least: FLOPs of its matrix products and convolutions (torch's
    FlopCounterMode, forward + backward) and bytes moved - parameters, gradients and both Adam moments read and
    written once (32 bytes per parameter), the batch read once, each tensor saved for backward written and read once.
    """
    from torch.utils.flop_counter import FlopCounterMode

    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = max(saved.get(storage.data_ptr(), 0), storage.nbytes())
        return tensor

    model.train()
    criterion = nn.MSELoss() if train.loss == "mse" else nn.L1Loss()
    device_type = next(model.parameters()).device.type
    with FlopCounterMode(display=False) as counter, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            forecast, aux_loss = model(batch.x, batch.x_mark)
        (criterion(forecast.float(), batch.y) + aux_loss.float()).backward()
    model.zero_grad(set_to_none=True)
    flops = 0.0
    for operator, value in counter.get_flop_counts()["Global"].items():
        if str(operator).endswith("convolution_backward"):
            continue  # the counter ignores groups here (a depthwise conv counts as dense): taken as 2x forward below
        flops += value * (3 if str(operator).endswith("convolution") else 1)
    count = sum(p.numel() for p in model.parameters())
    batch_bytes = sum(t.numel() * t.element_size() for t in (batch.x, batch.y, batch.x_mark))
    saved_bytes = sum(saved.values())
    return {"flops": flops, "bytes": float(32 * count + batch_bytes + 2 * saved_bytes),
            "parameters": count, "saved_activation_bytes": saved_bytes}


def floor_ms(floor: dict[str, float], ceilings: dict[str, float], bf16: bool) -> dict[str, float] | None:
    """The compute and memory times of a floor at the measured rates, and the larger of the two."""
    if not ceilings:
        return None
    rate = ceilings["matmul_tflops_bf16" if bf16 else "matmul_tflops_fp32"]
    compute = floor["flops"] / rate / 1e9
    memory = floor["bytes"] / ceilings["copy_tb_s"] / 1e9
    return {"compute_ms": compute, "memory_ms": memory, "floor_ms": max(compute, memory)}


class CompileCounter:
    """Graphs torch.compile built since the last `take()` (torch._dynamo's unique_graphs counter)."""

    def __init__(self) -> None:
        self.last = self._now()

    @staticmethod
    def _now() -> int:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])

    def take(self) -> int:
        now = self._now()
        built, self.last = now - self.last, now
        return built


def rotation(data: ForecastData, batch_size: int, generator: torch.Generator) -> list[WindowBatch]:
    """The ROTATION shuffled training batches that timed steps cycle through, drawn from `generator`."""
    return list(itertools.islice(data.train.iter_batches(batch_size, shuffle=True, generator=generator), ROTATION))


def time_steps(step: Callable[[WindowBatch], torch.Tensor], batches: list[WindowBatch], count: int,
               device: torch.device) -> dict[str, Any]:
    """Per-step times of `count` steps cycling through `batches`: CUDA events around each step on a GPU (host clock
    on the CPU); median, 10th / 90th percentiles, the whole loop's wall time per step, and whether the steps ran
    with no host synchronisation (torch.cuda.set_sync_debug_mode("error") around them; None on the CPU)."""
    def loop(check_syncs: bool) -> tuple[list[float], float]:
        marks = []
        synchronize(device)
        if check_syncs:
            torch.cuda.set_sync_debug_mode("error")
        try:
            started = time.perf_counter()
            for index in range(count):
                if device.type == "cuda":
                    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    begin.record()
                    step(batches[index % len(batches)])
                    end.record()
                    marks.append((begin, end))
                else:
                    begin_s = time.perf_counter()
                    step(batches[index % len(batches)])
                    marks.append(time.perf_counter() - begin_s)
        finally:
            if check_syncs:
                torch.cuda.set_sync_debug_mode(0)
        synchronize(device)
        wall = (time.perf_counter() - started) * 1000 / count
        if device.type == "cuda":
            return [begin.elapsed_time(end) for begin, end in marks], wall
        return [seconds * 1000 for seconds in marks], wall

    sync_free: bool | None = None
    sync_error = None
    if device.type == "cuda":
        try:
            times, wall = loop(check_syncs=True)
            sync_free = True
        except RuntimeError as error:
            sync_free, sync_error = False, str(error).splitlines()[0]
            times, wall = loop(check_syncs=False)
    else:
        times, wall = loop(check_syncs=False)
    ordered = sorted(times)
    return {"ms_per_step": statistics.median(times), "ms_p10": ordered[len(ordered) // 10],
            "ms_p90": ordered[(len(ordered) * 9) // 10], "ms_per_step_wall": wall, "steps_timed": count,
            "host_sync_free": sync_free, "sync_error": sync_error}


def measure_variant(config_name: str, variant_name: str, backend: str | None, data: ForecastData,
                    device: torch.device, settings: Settings, ceilings: dict[str, float],
                    time_epoch: bool = True, config: BenchConfig | None = None) -> dict[str, Any]:
    """One row: config `config_name` (or `config`, so named) trained through the engine's TrainStep in one variant:
    its floor, ms per step, whether the step syncs with the host, graphs compiled per phase, an epoch's time
    (train + validation; estimated when longer than settings.max_epoch_seconds) and peak GPU memory."""
    config, variant = config or CONFIGS[config_name], VARIANTS[variant_name]
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    spec, model = build_case(config, backend, data, device)
    train = spec.train
    batch_size = train.batch_size
    generator = torch.Generator().manual_seed(spec.seed)
    # The epoch below goes on drawing from this generator.
    batches = rotation(data, batch_size, generator)
    floor = step_floor(model, batches[0], train, variant.bf16)
    forward = torch.compile(model, mode=variant.compile_mode, dynamic=False) if variant.compile_mode else model
    step = TrainStep(model, make_optimizer(model, train, device), train.loss, slice(None), batch_size,
                     forward=forward, bf16=variant.bf16, cuda_graph=variant.cuda_graph)
    row: dict[str, Any] = {
        "config": config_name, "model": config.model, "backend": backend or "-", "variant": variant_name,
        "compile_mode": variant.compile_mode, "cuda_graph_requested": variant.cuda_graph, "bf16": variant.bf16,
        "batch_size": batch_size, "steps_per_epoch": math.ceil(data.train.num_windows / batch_size),
        "train_windows": data.train.num_windows, "val_windows": data.val.num_windows, "floor": floor,
        "floor_time": floor_ms(floor, ceilings, variant.bf16),
    }
    compiled = CompileCounter()
    started = time.perf_counter()
    for index in range(settings.warmup):
        step(batches[index % len(batches)])
    synchronize(device)
    row["warmup_seconds"] = time.perf_counter() - started
    started = time.perf_counter()
    for index in range(5):
        step(batches[index % len(batches)])
    synchronize(device)
    estimate_ms = (time.perf_counter() - started) * 1000 / 5
    count = max(min(20, settings.steps), min(settings.steps, int(settings.step_seconds * 1000 / max(estimate_ms, 1e-3))))
    row.update(time_steps(step, batches, count, device))
    row["graphed"] = step.graphed
    row["capture_error"] = step.capture_error
    compiled_train = compiled.take()
    evaluate(forward, data.val, features="M", batch_size=batch_size, limit=2, bf16=variant.bf16)
    row["compiled_graphs"] = {"train": compiled_train, "eval": compiled.take()}
    steps = row["steps_per_epoch"] if settings.limit_batches is None else settings.limit_batches
    epoch_estimate = (row["ms_per_step_wall"] * steps / 1000) * 1.2
    row["epoch_measured"] = time_epoch and epoch_estimate <= settings.max_epoch_seconds
    if row["epoch_measured"]:
        # The engine's epoch: a shuffled pass over the training windows, then one over the validation windows.
        model.train()
        synchronize(device)
        started = time.perf_counter()
        total = torch.zeros((), device=device)
        for batch in data.train.iter_batches(batch_size, shuffle=True, generator=generator,
                                             limit=settings.limit_batches):
            total += step(batch)
        row["epoch_train_loss"] = total.item() / steps
        trained = time.perf_counter()
        val_mse, _ = evaluate(forward, data.val, features="M", batch_size=batch_size, limit=settings.limit_batches,
                              bf16=variant.bf16)
        finished = time.perf_counter()
        row.update(epoch_seconds=finished - started, train_seconds=trained - started, val_seconds=finished - trained,
                   val_mse=val_mse)
        row["compiled_graphs"]["timed_epoch"] = compiled.take()
    else:
        row["epoch_seconds_estimate"] = epoch_estimate
    if device.type == "cuda":
        row["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return row


def measure_expert_loop(data: ForecastData, device: torch.device, settings: Settings) -> dict[str, Any]:
    """moe16 with the official per-expert loop (benchmarks.moe_bench.LoopedExperts) and the reference scan, eager."""
    from benchmarks.moe_bench import LoopedExperts

    spec, model = build_case(CONFIGS["mixmamba-moe16"], "reference", data, device)
    model.moe.experts = LoopedExperts(model.moe.experts).to(device)
    for block in model.moe.experts.blocks:
        block.scan_backend = "reference"
    train = spec.train
    step = TrainStep(model, make_optimizer(model, train, device), train.loss, slice(None), train.batch_size)
    batches = rotation(data, train.batch_size, torch.Generator().manual_seed(spec.seed))
    for batch in batches[:3]:
        step(batch)
    synchronize(device)
    started = time.perf_counter()
    step(batches[3])
    synchronize(device)
    estimate_ms = (time.perf_counter() - started) * 1000
    count = max(min(5, settings.steps), min(settings.steps, int(settings.step_seconds * 1000 / estimate_ms)))
    return {"config": "mixmamba-moe16", "backend": "reference", "variant": "per-expert-loop-eager",
            "batch_size": train.batch_size, **time_steps(step, batches, count, device)}


def profile_step(config_name: str, variant_name: str, backend: str | None, data: ForecastData,
                 device: torch.device, steps: int = 10) -> dict[str, Any]:
    """The kernels of a config's training step, heaviest first: device time and launches per step (torch.profiler
    over `steps` eager steps of the variant's precision; a graph replays these same kernels)."""
    from torch.autograd import DeviceType

    config, variant = CONFIGS[config_name], VARIANTS[variant_name]
    spec, model = build_case(config, backend, data, device)
    train = spec.train
    step = TrainStep(model, make_optimizer(model, train, device), train.loss, slice(None), train.batch_size,
                     bf16=variant.bf16)
    batches = rotation(data, train.batch_size, torch.Generator().manual_seed(spec.seed))
    for batch in batches[:3]:
        step(batch)
    synchronize(device)
    on_gpu = device.type == "cuda"
    activity = torch.profiler.ProfilerActivity.CUDA if on_gpu else torch.profiler.ProfilerActivity.CPU
    with torch.profiler.profile(activities=[activity]) as profiler:
        for index in range(steps):
            step(batches[index % len(batches)])
        synchronize(device)
    kind = DeviceType.CUDA if on_gpu else DeviceType.CPU
    events = [event for event in profiler.key_averages() if event.device_type == kind]
    self_us = [event.self_device_time_total if on_gpu else event.self_cpu_time_total for event in events]
    ranked = sorted(zip(events, self_us), key=lambda pair: -pair[1])
    return {"config": config_name, "variant": variant_name, "backend": backend or "-", "steps": steps,
            "ms_per_step": sum(self_us) / steps / 1000, "launches_per_step": sum(e.count for e in events) / steps,
            "top": [{"name": event.key[:120], "ms_per_step": us / steps / 1000, "calls_per_step": event.count / steps}
                    for event, us in ranked[:15]]}


def engine_run(config_name: str, data_dir: str | None, device: torch.device, train_overrides: dict[str, Any],
               label: str) -> dict[str, Any]:
    """A real `run_experiment` (train, validate, test, artifacts): its per-epoch times and test metrics."""
    config = CONFIGS[config_name]
    spec = ExperimentSpec(dataset=DATASET, model=config.model, seq_len=PROTOCOL.seq_len,
                          pred_len=PROTOCOL.pred_len, device=str(device), data_dir=data_dir,
                          model_overrides=dict(config.model_overrides),
                          train_overrides={**config.train_overrides, **train_overrides})
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mixbench-perf-") as artifacts:
        result = run_experiment(spec, artifact_dir=Path(artifacts))
    return {"config": config_name, "label": label, "train": result.train_config,
            "epoch_seconds": [row["epoch_seconds"] for row in result.history],
            "train_loss": [row["train_loss"] for row in result.history],
            "val_loss": [row["val_loss"] for row in result.history], "best_epoch": result.best_epoch,
            "test_mse": result.test_mse, "test_mae": result.test_mae, "wall_seconds": time.perf_counter() - started}


def bf16_accuracy(config_name: str, data_dir: str | None, device: torch.device, epochs: int | None,
                  limit_batches: int | None = None) -> dict[str, Any]:
    """Test MSE of the same recipe and seed trained in float32 and under bf16 autocast, and their relative gap."""
    overrides: dict[str, Any] = {"limit_train_batches": limit_batches, "limit_eval_batches": limit_batches}
    if epochs is not None:
        overrides["epochs"] = epochs
    runs = {name: engine_run(config_name, data_dir, device, {**overrides, "bf16": name == "bf16"}, name)
            for name in ("fp32", "bf16")}
    fp32, bf16 = runs["fp32"]["test_mse"], runs["bf16"]["test_mse"]
    outcome: dict[str, Any] = {"config": config_name, "runs": runs, "bf16_vs_fp32": bf16 / fp32 - 1}
    if config_name == "patchtst":
        outcome.update(reference_test_mse=PATCHTST_REFERENCE_TEST_MSE,
                       fp32_vs_reference=fp32 / PATCHTST_REFERENCE_TEST_MSE - 1,
                       bf16_vs_reference=bf16 / PATCHTST_REFERENCE_TEST_MSE - 1)
    return outcome


def pack_trials(k: int, data_dir: str | None, device: torch.device, epochs: int,
                limit_batches: int | None = None, config_name: str = "mixmamba-small") -> dict[str, Any]:
    """Wall time of k concurrent processes, each one trial of `config_name` (`epochs` epochs of weather through
    run_experiment: train, validation, test, artifacts) capped at 1/k of the GPU's memory; trials/hour from it."""
    threads = max(1, (os.cpu_count() or 1) // k)
    command = [sys.executable, "-m", "benchmarks.perf", "--pack-worker", "--memory-fraction", f"{1 / k:.6f}",
               "--threads", str(threads), "--device", str(device), "--pack-epochs", str(epochs),
               "--pack-config", config_name]
    if data_dir is not None:
        command += ["--data-dir", data_dir]
    if limit_batches is not None:
        command += ["--limit-batches", str(limit_batches)]
    with tempfile.TemporaryDirectory(prefix="mixbench-pack-") as folder:
        logs = [Path(folder) / f"worker{index}.log" for index in range(k)]
        started = time.perf_counter()
        handles = [log.open("w") for log in logs]
        processes = [subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
                     for handle in handles]
        codes = [process.wait() for process in processes]
        wall = time.perf_counter() - started
        for handle in handles:
            handle.close()
        outputs = [log.read_text() for log in logs]
    workers = []
    for code, output in zip(codes, outputs):
        lines = [line for line in output.splitlines() if line.startswith("{")]
        if code != 0 or not lines:
            raise RuntimeError(f"a packed worker exited {code}: {output[-600:]}")
        workers.append(json.loads(lines[-1]))
    return {"k": k, "config": config_name, "epochs_per_trial": epochs, "threads_per_trial": threads, "memory_fraction": 1 / k,
            "wall_seconds": wall, "trials_per_hour": k * 3600 / wall,
            "worker_run_seconds": [worker["run_seconds"] for worker in workers],
            "worker_epoch_seconds": [worker["epoch_seconds"] for worker in workers],
            "worker_peak_gpu_memory_mb": [worker["peak_gpu_memory_mb"] for worker in workers],
            "test_mse": [worker["test_mse"] for worker in workers]}


def pack_worker(args: argparse.Namespace) -> None:
    """One packed trial (a `pack_trials` subprocess): prints its timings as one JSON line."""
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if device.type == "cuda" and args.memory_fraction < 1:
        torch.cuda.set_per_process_memory_fraction(args.memory_fraction, torch.cuda.current_device())
    limits = {"limit_train_batches": args.limit_batches, "limit_eval_batches": args.limit_batches}
    run = engine_run(args.pack_config, args.data_dir, device, {"epochs": args.pack_epochs, **limits}, "packed")
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    print(json.dumps({"run_seconds": time.perf_counter() - started, "epoch_seconds": run["epoch_seconds"],
                      "test_mse": run["test_mse"], "peak_gpu_memory_mb": peak}))


def read_search_trials(experiment_dir: Path) -> list[dict[str, Any]]:
    """Each Tune trial's reports (trial_*/result.json, one JSON object per line), in folder order."""
    trials = []
    for result_file in sorted(experiment_dir.glob("trial_*/result.json")):
        reports = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
        if reports:
            trials.append({"trial": result_file.parent.name, "reports": reports})
    return trials


def peak_concurrency(intervals: list[tuple[float, float]]) -> int:
    """Most intervals open at one time; one ending when another starts does not overlap it."""
    events = sorted([(end, -1) for _, end in intervals] + [(start, 1) for start, _ in intervals])
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    return peak


def summarize_search(experiment_dir: Path, log: str, wall: float) -> dict[str, Any]:
    """Trials/hour, trial outcomes and the peak number of concurrent trials of a finished `mixbench search`."""
    trials = read_search_trials(experiment_dir)
    # A trial runs from its first report minus that report's iteration time until its last report.
    intervals = [(trial["reports"][0]["timestamp"] - trial["reports"][0].get("time_this_iter_s", 0.0),
                  trial["reports"][-1]["timestamp"]) for trial in trials]
    running = [int(count) for count in re.findall(r"\| (\d+) running,", log)]
    epochs = [report["epoch_seconds"] for trial in trials for report in trial["reports"] if "epoch_seconds" in report]
    finished = sum(any("test_mse" in report for report in trial["reports"]) for trial in trials)
    return {"wall_seconds": wall, "trials_reporting": len(trials), "trials_finished": finished,
            "trials_stopped_early": len(trials) - finished, "trials_per_hour": len(trials) * 3600 / wall,
            "epochs_reported": len(epochs), "epochs_per_hour": len(epochs) * 3600 / wall,
            "median_epoch_seconds": statistics.median(epochs) if epochs else None,
            "peak_concurrent_trials": peak_concurrency(intervals) if intervals else 0,
            "peak_running_in_progress_line": max(running, default=0)}


def run_search(gpu_share: float, trials: int, epochs: int, budget_s: float, data_dir: str | None,
               workdir: Path) -> dict[str, Any]:
    """`mixbench search` (python -m cli search) on weather with this GPU share per trial, summarised."""
    name = f"perf-gpu{gpu_share:g}"
    command = [sys.executable, "-m", "cli", "search", "--dataset", DATASET, "--trials", str(trials), "--epochs",
               str(epochs), "--gpus-per-trial", f"{gpu_share:g}", "--time-budget", f"{budget_s:g}", "--name", name,
               "--storage-path", str(workdir / "ray"), "--tracking-uri", f"sqlite:///{workdir / 'mlflow.db'}"]
    if data_dir is not None:
        command += ["--data-dir", str(Path(data_dir).resolve())]
    started = time.perf_counter()
    process = subprocess.run(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - started
    summary = {"gpus_per_trial": gpu_share, "trials": trials, "epochs": epochs, "time_budget_s": budget_s,
               "command": " ".join(command[1:]), "returncode": process.returncode,
               "log_tail": process.stdout.splitlines()[-25:]}
    summary.update(summarize_search(workdir / "ray" / name, process.stdout, wall))
    return summary


def target_checks(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The H200 targets of issue 9, each with what was achieved (None when it was not measured)."""
    def best(config: str, key: str) -> dict[str, Any]:
        return min((r for r in report["rows"] if r["config"] == config and key in r), key=lambda r: r[key],
                   default={})

    small, small_epoch = best("mixmamba-small", "ms_per_step"), best("mixmamba-small", "epoch_seconds")
    moe = best("mixmamba-moe16", "ms_per_step")
    moe_fp32 = min((r for r in report["rows"] if r["config"] == "mixmamba-moe16" and not r["bf16"]),
                   key=lambda r: r["ms_per_step"], default={})
    loop = report.get("expert_loop") or {}
    patch = best("patchtst", "epoch_seconds")
    accuracy = report.get("accuracy") or {}
    packing = {entry["k"]: entry["trials_per_hour"] for entry in report.get("packing", [])}
    best_pack = max((k for k in packing if k >= 8), key=lambda k: packing[k], default=None)
    def name(row: dict[str, Any]) -> str:
        return f"{row.get('variant', '-')}{' ' + row['backend'] if row.get('backend', '-') != '-' else ''}"

    checks = [
        (f"mixmamba-small ms/step <= 1.5 ({name(small)})", small.get("ms_per_step"), lambda v: v <= 1.5),
        (f"mixmamba-small epoch (train + validation) <= 3 s ({name(small_epoch)})",
         small_epoch.get("epoch_seconds"), lambda v: v <= 3),
        (f"mixmamba-moe16 ms/step <= 5 ({name(moe)})", moe.get("ms_per_step"), lambda v: v <= 5),
        (f"mixmamba-moe16 per-expert loop (fp32, reference scan) / batched >= 10x ({name(moe_fp32)}, fp32)",
         loop["ms_per_step"] / moe_fp32["ms_per_step"] if loop and moe_fp32 else None, lambda v: v >= 10),
        (f"mixmamba-moe16 per-expert loop / batched >= 10x ({name(moe)})",
         loop["ms_per_step"] / moe["ms_per_step"] if loop and moe else None, lambda v: v >= 10),
        (f"patchtst epoch <= 3 s ({name(patch)})", patch.get("epoch_seconds"), lambda v: v <= 3),
        ("patchtst bf16 test MSE at most 1% above 0.177 (relative difference)",
         accuracy.get("bf16_vs_reference"), lambda v: v <= 0.01),
        ("patchtst bf16 vs fp32 test MSE within 1%", accuracy.get("bf16_vs_fp32"), lambda v: abs(v) <= 0.01),
        (f"packing k >= 8 trials/hour >= 5x k = 1 (k = {best_pack})",
         packing[best_pack] / packing[1] if best_pack and 1 in packing else None, lambda v: v >= 5),
    ]
    return [{"target": name, "achieved": value, "met": None if value is None else bool(test(value))}
            for name, value, test in checks]


def _parse_list(text: str, cast: Callable[[str], Any]) -> list[Any]:
    return [cast(item.strip()) for item in text.split(",") if item.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(CONFIGS), help=f"comma-separated, from {', '.join(CONFIGS)}")
    parser.add_argument("--backends", default="triton,reference",
                        help="MixMamba scan backends (extra variants use the first available one)")
    parser.add_argument("--variants", default=None,
                        help=f"only these step variants ({', '.join(VARIANTS)}); default: the plan's")
    parser.add_argument("--parts", default="rows,loop,engine,pack,accuracy,extra",
                        help=f"what to run, in this order, from {', '.join(PARTS)}: kernel profiles, step rows, the "
                             "moe16 per-expert loop, a real 2-epoch engine run, packed trials, PatchTST bf16 accuracy, "
                             "rows that compile for a minute or more, real searches")
    parser.add_argument("--rows", default=None,
                        help="config:variant rows for the rows part instead of the plan, e.g. dlinear:graph")
    parser.add_argument("--pack", default="1,4,8,16", help="k concurrent trials per GPU to time; '' for none")
    parser.add_argument("--pack-epochs", type=int, default=1, help="epochs per packed trial")
    parser.add_argument("--search-gpus", default="0.125,1", help="GPU shares per trial of the searches")
    parser.add_argument("--search-trials", type=int, default=16)
    parser.add_argument("--search-epochs", type=int, default=2)
    parser.add_argument("--search-budget-s", type=float, default=90.0, help="--time-budget of each search")
    parser.add_argument("--search-out", type=Path, default=None,
                        help="JSON for the searches (default: beside --out, search_<device>.json)")
    parser.add_argument("--steps", type=int, default=200, help="most timed steps per row (median taken)")
    parser.add_argument("--warmup", type=int, default=20, help=f"untimed steps first (> {GRAPH_WARMUP_STEPS})")
    parser.add_argument("--step-seconds", type=float, default=3.0, help="fewer timed steps when slower than this")
    parser.add_argument("--max-epoch-seconds", type=float, default=25.0,
                        help="estimate instead of timing an epoch expected to take longer")
    parser.add_argument("--limit-batches", type=int, default=None,
                        help="(smoke tests) cap every epoch's training and evaluation batches")
    parser.add_argument("--budget-s", type=float, default=None, help="start nothing after this many seconds")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--data-dir", default=None, help="default: $MIXBENCH_DATA_DIR, else ./dataset")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/perf_<device>.json")
    parser.add_argument("--pack-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--memory-fraction", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--pack-config", default="mixmamba-small", choices=sorted(CONFIGS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = [name for name in _parse_list(args.models, str) if name not in CONFIGS]
    if unknown:
        parser.error(f"--models: {unknown[0]!r} is unknown; use {', '.join(CONFIGS)}")
    unknown = [name for name in _parse_list(args.parts, str) if name not in PARTS]
    if unknown:
        parser.error(f"--parts: {unknown[0]!r} is unknown; use {', '.join(PARTS)}")
    for item in _parse_list(args.rows or "", str):
        config_name, _, variant_name = item.partition(":")
        if config_name not in CONFIGS or variant_name not in VARIANTS:
            parser.error(f"--rows: {item!r} is not config:variant; use configs {', '.join(CONFIGS)} and variants "
                         f"{', '.join(VARIANTS)}")
    if args.variants is not None:
        unknown = [name for name in _parse_list(args.variants, str) if name not in VARIANTS]
        if unknown:
            parser.error(f"--variants: {unknown[0]!r} is unknown; use {', '.join(VARIANTS)}")
    if args.warmup <= GRAPH_WARMUP_STEPS:
        parser.error(f"--warmup {args.warmup}: use more than {GRAPH_WARMUP_STEPS} so the graph is captured untimed")
    return args


def device_slug(environment_info: dict[str, Any]) -> str:
    if environment_info["device_type"] == "cpu":
        return "cpu"
    name = re.sub(r"[^a-z0-9]+", "-", environment_info["device"].lower()).strip("-")
    return name.removeprefix("nvidia-")


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    if args.pack_worker:
        pack_worker(args)
        return None
    began = time.perf_counter()
    device = resolve_device(args.device)
    settings = Settings(steps=args.steps, warmup=args.warmup, step_seconds=args.step_seconds,
                        max_epoch_seconds=args.max_epoch_seconds, limit_batches=args.limit_batches)
    models = _parse_list(args.models, str)
    parts = _parse_list(args.parts, str)
    variants = _parse_list(args.variants, str) if args.variants is not None else None
    info = environment(device)
    out = args.out or RESULTS_DIR / f"perf_{device_slug(info)}.json"
    search_out = args.search_out or out.with_name(f"search_{device_slug(info)}.json")
    report: dict[str, Any] = {
        "environment": info, "dataset": DATASET, "seq_len": PROTOCOL.seq_len, "pred_len": PROTOCOL.pred_len,
        "configs": {name: {"model": c.model, "model_overrides": c.model_overrides,
                           "train_overrides": c.train_overrides, "source": c.source} for name, c in CONFIGS.items()},
        "settings": asdict(settings), "ceilings": {}, "rows": [], "expert_loop": None, "engine_runs": [],
        "accuracy": None, "packing": [], "profiles": [], "errors": [], "skipped": [],
    }
    searches: list[dict[str, Any]] = []

    data = load_forecast_data(DATASET, PROTOCOL, data_dir=args.data_dir, device=device)
    backends = usable_backends(_parse_list(args.backends, str), device, report)

    planned: set[tuple[str, str, str | None]] = set()

    def rows_of(plan: list[tuple[str, str, bool]]) -> list[tuple[str, Callable[[], Any]]]:
        items = []
        for config_name, variant_name, epoch in plan:
            if config_name not in models or (variants is not None and variant_name not in variants):
                continue
            config_backends: list[str | None] = [None]
            if CONFIGS[config_name].model == "mixmamba":
                config_backends = backends if variant_name in BASE_VARIANTS else backends[:1]
            for backend in config_backends:
                if (config_name, variant_name, backend) in planned:
                    continue
                planned.add((config_name, variant_name, backend))
                def measure(config_name=config_name, variant_name=variant_name, backend=backend, epoch=epoch):
                    report["rows"].append(measure_variant(config_name, variant_name, backend, data, device,
                                                          settings, report["ceilings"], epoch))
                items.append((f"{config_name} {variant_name} {backend or ''}".strip(), measure))
        return items

    chosen_rows = [(item.partition(":")[0], item.partition(":")[2], True) for item in _parse_list(args.rows, str)
                   ] if args.rows is not None else ROWS
    work: list[tuple[str, Callable[[], Any]]] = []
    if device.type == "cuda":
        work.append(("ceilings", lambda: report["ceilings"].update(measure_ceilings(device))))
    for part in parts:
        if part == "profile":
            for config_name, variant_name in PROFILED:
                if config_name in models:
                    backend = backends[0] if CONFIGS[config_name].model == "mixmamba" and backends else None
                    work.append((f"profile {config_name} {variant_name}", lambda c=config_name, v=variant_name,
                                 b=backend: report["profiles"].append(profile_step(c, v, b, data, device))))
        elif part in ("rows", "extra"):
            work += rows_of(chosen_rows if part == "rows" else EXTRA_ROWS)
        elif part == "loop" and "mixmamba-moe16" in models:
            work.append(("moe16 per-expert loop", lambda: report.update(expert_loop=measure_expert_loop(
                data, device, settings))))
        elif part == "engine" and "mixmamba-small" in models:
            work.append(("engine mixmamba-small", lambda: report["engine_runs"].append(engine_run(
                "mixmamba-small", args.data_dir, device, {"epochs": 2, "limit_train_batches": args.limit_batches,
                                                          "limit_eval_batches": args.limit_batches},
                "2 epochs, engine defaults"))))
        elif part == "pack":
            for k in _parse_list(args.pack, int):
                work.append((f"packing k={k}", lambda k=k: report["packing"].append(pack_trials(
                    k, args.data_dir, device, args.pack_epochs, args.limit_batches))))
        elif part == "accuracy" and "patchtst" in models:
            work.append(("patchtst bf16 accuracy", lambda: report.update(accuracy=bf16_accuracy(
                "patchtst", args.data_dir, device, None, args.limit_batches))))
        elif part == "search":
            workdir = Path(tempfile.mkdtemp(prefix="mixbench-search-"))
            for share in _parse_list(args.search_gpus, float):
                work.append((f"search gpus-per-trial {share:g}", lambda share=share: searches.append(run_search(
                    share, args.search_trials, args.search_epochs, args.search_budget_s, args.data_dir,
                    workdir))))

    for name, measure in work:
        elapsed = time.perf_counter() - began
        if args.budget_s is not None and elapsed > args.budget_s:
            report["skipped"].append(name)
            print(f"[{elapsed:6.1f} s] skipped {name}: past --budget-s", flush=True)
            continue
        print(f"[{elapsed:6.1f} s] {name} ...", flush=True)
        try:
            measure()
        except Exception as error:  # one failed measurement must not cost the others
            traceback.print_exc()
            report["errors"].append({"item": name, "error": f"{type(error).__name__}: {error}"[:800]})
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        report["targets"] = target_checks(report)
        report["seconds"] = time.perf_counter() - began
        write_json(out, report)
        if searches:
            write_json(search_out, {"environment": info, "searches": searches})
    print_summary(report, searches)
    print(f"wrote {out}" + (f" and {search_out}" if searches else ""))
    return report


def usable_backends(names: list[str], device: torch.device, report: dict[str, Any]) -> list[str]:
    """The listed scan backends that can run on `device`; the others are noted as skipped."""
    from mixmamba import resolve_scan_backend

    probe = torch.zeros(1, device=device)
    usable = []
    for name in names:
        try:
            resolve_scan_backend(name, probe)
            usable.append(name)
        except ValueError as error:
            report["skipped"].append(f"scan backend {name}: {error}")
    return usable


def write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, default=str) + "\n")


def print_summary(report: dict[str, Any], searches: list[dict[str, Any]]) -> None:
    """The short table the device call's output tail carries."""
    def number(value: Any, digits: int = 2) -> str:
        return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "-"

    print(f"\n{report['environment'].get('device')}, torch {report['environment']['torch']}; ceilings "
          + ", ".join(f"{key} {number(value)}" for key, value in report["ceilings"].items()
                      if isinstance(value, float)))
    print(f"{'config':<15}{'backend':<10}{'variant':<24}{'ms/step':>9}{'floor':>8}{'wall':>9}{'epoch s':>9}"
          f"{'peak MB':>9}{'graphs':>8}  sync-free graphed")
    for row in report["rows"]:
        graphs = row.get("compiled_graphs", {})
        epoch = row.get("epoch_seconds", row.get("epoch_seconds_estimate"))
        epoch_text = number(epoch) + ("" if "epoch_seconds" in row else "~")
        print(f"{row['config']:<15}{row['backend']:<10}{row['variant']:<24}{number(row['ms_per_step']):>9}"
              f"{number((row.get('floor_time') or {}).get('floor_ms'), 3):>8}{number(row['ms_per_step_wall']):>9}"
              f"{epoch_text:>9}{number(row.get('peak_gpu_memory_mb'), 0):>9}"
              f"{'/'.join(str(graphs.get(key, '-')) for key in ('train', 'eval', 'timed_epoch')):>8}  "
              f"{row['host_sync_free']} {row['graphed']}")
    for profile in report["profiles"]:
        print(f"profile {profile['config']} {profile['variant']}: {profile['ms_per_step']:.3f} ms of kernels, "
              f"{profile['launches_per_step']:.0f} launches per step; top: "
              + "; ".join(f"{top['name'][:40]} {top['ms_per_step']:.3f}" for top in profile["top"][:5]))
    if report["expert_loop"]:
        print(f"moe16 per-expert loop, reference scan: {number(report['expert_loop']['ms_per_step'])} ms/step")
    for run in report["engine_runs"]:
        print(f"engine {run['config']} ({run['label']}): epochs {[round(s, 2) for s in run['epoch_seconds']]} s, "
              f"test MSE {run['test_mse']:.4f}")
    if report["accuracy"]:
        accuracy = report["accuracy"]
        print(f"accuracy {accuracy['config']}: fp32 {accuracy['runs']['fp32']['test_mse']:.4f}, bf16 "
              f"{accuracy['runs']['bf16']['test_mse']:.4f} ({accuracy['bf16_vs_fp32']:+.2%}); epochs fp32 "
              f"{[round(s, 2) for s in accuracy['runs']['fp32']['epoch_seconds']]} bf16 "
              f"{[round(s, 2) for s in accuracy['runs']['bf16']['epoch_seconds']]}")
    for entry in report["packing"]:
        print(f"packing k={entry['k']:>2}: wall {entry['wall_seconds']:.1f} s, {entry['trials_per_hour']:.0f} "
              f"trials/hour, epochs {[round(s[0], 1) for s in entry['worker_epoch_seconds']]}")
    for search in searches:
        print(f"search gpus/trial {search['gpus_per_trial']:g}: rc {search['returncode']}, "
              f"{search['trials_reporting']} trials ({search['trials_finished']} finished) in "
              f"{search['wall_seconds']:.0f} s = {search['trials_per_hour']:.0f}/hour, peak concurrent "
              f"{search['peak_concurrent_trials']} (progress line {search['peak_running_in_progress_line']})")
    for check in report.get("targets", []):
        print(f"target {check['target']}: {number(check['achieved'], 3)} -> {check['met']}")
    for error in report["errors"]:
        print(f"ERROR {error['item']}: {error['error'][:300]}")
    if report["skipped"]:
        print(f"skipped: {report['skipped']}")


if __name__ == "__main__":
    main()
