"""Timing the engine's training step: step variants (eager, CUDA graph, torch.compile, bf16), ms per step with no
host syncs checked, graphs compiled per phase, an epoch's time, the per-expert loop MixMamba replaces, and kernel
profiles of a step."""
from __future__ import annotations

import itertools
import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, cast

import torch
from torch._dynamo.utils import counters
from torch.autograd import DeviceType

from benchmarks.data.protocol import ForecastData, WindowBatch
from benchmarks.speed.cases import CONFIGS, PROTOCOL, BenchConfig, BenchData, build_case
from benchmarks.speed.floors import floor_ms, step_floor
from benchmarks.speed.moe_bench import LoopedExperts
from benchmarks.speed.report import synchronize
from benchmarks.training.evaluation import evaluate, target_channels
from benchmarks.training.step import TrainStep, make_optimizer
from mixmamba import MambaExperts, MixMamba

ROTATION = 8  # distinct batches the timed steps cycle through


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


@dataclass(frozen=True)
class TimingSettings:
    """How long each row measures (perf's command-line flags)."""

    steps: int = 200  # most timed steps per row
    warmup: int = 20  # untimed steps first
    step_seconds: float = 3.0  # fewer timed steps when slower than this
    max_epoch_seconds: float = 25.0  # estimate instead of timing an epoch expected to take longer
    limit_batches: int | None = None  # smoke tests: caps every epoch's training and evaluation batches


class CompileCounter:
    """Graphs torch.compile built since the last `take()` (torch._dynamo's unique_graphs counter)."""

    def __init__(self) -> None:
        self.last = self._now()

    @staticmethod
    def _now() -> int:
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
    sync_free: bool | None = None
    sync_error = None
    if device.type == "cuda":
        try:
            times, wall = _timed_loop(step, batches, count, device, check_syncs=True)
            sync_free = True
        except RuntimeError as error:
            sync_free, sync_error = False, str(error).splitlines()[0]
            times, wall = _timed_loop(step, batches, count, device, check_syncs=False)
    else:
        times, wall = _timed_loop(step, batches, count, device, check_syncs=False)
    ordered = sorted(times)
    return {"ms_per_step": statistics.median(times), "ms_p10": ordered[len(ordered) // 10],
            "ms_p90": ordered[(len(ordered) * 9) // 10], "ms_per_step_wall": wall, "steps_timed": count,
            "host_sync_free": sync_free, "sync_error": sync_error}


def _timed_loop(step: Callable[[WindowBatch], torch.Tensor], batches: list[WindowBatch], count: int,
                device: torch.device, check_syncs: bool) -> tuple[list[float], float]:
    """(ms of each step, wall ms per step of the whole loop); with `check_syncs` a host sync raises RuntimeError."""
    events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
    seconds: list[float] = []
    synchronize(device)
    if check_syncs:
        torch.cuda.set_sync_debug_mode("error")
    try:
        started = time.perf_counter()
        for index in range(count):
            batch = batches[index % len(batches)]
            if device.type == "cuda":
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                begin.record()
                step(batch)
                end.record()
                events.append((begin, end))
            else:
                begin_s = time.perf_counter()
                step(batch)
                seconds.append(time.perf_counter() - begin_s)
    finally:
        if check_syncs:
            torch.cuda.set_sync_debug_mode(0)
    synchronize(device)
    wall = (time.perf_counter() - started) * 1000 / count
    if device.type == "cuda":
        return [begin.elapsed_time(end) for begin, end in events], wall
    return [value * 1000 for value in seconds], wall


def measure_variant(config_name: str, variant_name: str, backend: str | None, data: BenchData,
                    device: torch.device, settings: TimingSettings, ceilings: dict[str, float | str],
                    time_epoch: bool = True, config: BenchConfig | None = None) -> dict[str, Any]:
    """One row: config `config_name` (or `config`, so named) trained through the engine's TrainStep in one variant:
    its floor, ms per step, whether the step syncs with the host, graphs compiled per phase, an epoch's time
    (train + validation; estimated when longer than settings.max_epoch_seconds) and peak GPU memory."""
    config, variant = config or CONFIGS[config_name], VARIANTS[variant_name]
    windows = data.windows
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    experiment, model = build_case(config, backend, data.file, device)
    train = experiment.train
    batch_size = train.batch_size
    generator = torch.Generator().manual_seed(experiment.seed)
    # The epoch below goes on drawing from this generator.
    batches = rotation(windows, batch_size, generator)
    floor = step_floor(model, batches[0], train, variant.bf16)
    forward = torch.compile(model, mode=variant.compile_mode, dynamic=False) if variant.compile_mode else model
    step = TrainStep(model, make_optimizer(model, train, device), train.loss, target_channels(PROTOCOL.features),
                     batch_size, forward=forward, bf16=variant.bf16, cuda_graph=variant.cuda_graph)
    row: dict[str, Any] = {
        "config": config_name, "model": config.model, "backend": backend or "-", "variant": variant_name,
        "compile_mode": variant.compile_mode, "cuda_graph_requested": variant.cuda_graph, "bf16": variant.bf16,
        "batch_size": batch_size, "steps_per_epoch": math.ceil(windows.train.num_windows / batch_size),
        "train_windows": windows.train.num_windows, "val_windows": windows.val.num_windows, "floor": floor,
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
    affordable = int(settings.step_seconds * 1000 / max(estimate_ms, 1e-3))
    count = max(min(20, settings.steps), min(settings.steps, affordable))
    row.update(time_steps(step, batches, count, device))
    row["graphed"] = step.graphed
    row["capture_error"] = step.capture_error
    compiled_train = compiled.take()
    evaluate(forward, windows.val, features=PROTOCOL.features, batch_size=batch_size, limit=2, bf16=variant.bf16)
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
        for batch in windows.train.iter_batches(batch_size, shuffle=True, generator=generator,
                                                limit=settings.limit_batches):
            total += step(batch)
        row["epoch_train_loss"] = total.item() / steps
        trained = time.perf_counter()
        score = evaluate(forward, windows.val, features=PROTOCOL.features, batch_size=batch_size,
                         limit=settings.limit_batches, bf16=variant.bf16)
        finished = time.perf_counter()
        row.update(epoch_seconds=finished - started, train_seconds=trained - started, val_seconds=finished - trained,
                   val_mse=score.mse)
        row["compiled_graphs"]["timed_epoch"] = compiled.take()
    else:
        row["epoch_seconds_estimate"] = epoch_estimate
    if device.type == "cuda":
        row["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return row


def measure_expert_loop(data: BenchData, device: torch.device, settings: TimingSettings) -> dict[str, Any]:
    """moe16 with the official per-expert loop (benchmarks.speed.moe_bench.LoopedExperts) and the reference scan,
    eager."""
    experiment, model = build_case(CONFIGS["mixmamba-moe16"], "reference", data.file, device)
    mixture = cast(MixMamba, model).moe
    mixture.experts = LoopedExperts(cast(MambaExperts, mixture.experts), scan_backend="reference").to(device)
    train = experiment.train
    step = TrainStep(model, make_optimizer(model, train, device), train.loss, target_channels(PROTOCOL.features),
                     train.batch_size)
    batches = rotation(data.windows, train.batch_size, torch.Generator().manual_seed(experiment.seed))
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


def profile_step(config_name: str, variant_name: str, backend: str | None, data: BenchData,
                 device: torch.device, steps: int = 10) -> dict[str, Any]:
    """The kernels of a config's training step, heaviest first: device time and launches per step (torch.profiler
    over `steps` eager steps of the variant's precision; a graph replays these same kernels)."""
    config, variant = CONFIGS[config_name], VARIANTS[variant_name]
    experiment, model = build_case(config, backend, data.file, device)
    train = experiment.train
    step = TrainStep(model, make_optimizer(model, train, device), train.loss, target_channels(PROTOCOL.features),
                     train.batch_size, bf16=variant.bf16)
    batches = rotation(data.windows, train.batch_size, torch.Generator().manual_seed(experiment.seed))
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
