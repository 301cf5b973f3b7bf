"""Model cost benchmark: forward+backward time per step, parameter count and peak step memory of every registered
model at its weather recipe settings (pred_len 96, batch 32 by default), written as JSON:

    python -m benchmarks.speed.model_bench                     # -> benchmarks/results/models_<device>.json
    python -m benchmarks.speed.model_bench --device cuda --models mixmamba patchtst --steps 20

Each model runs in a fresh process so that one model's memory cannot hide another's. Peak memory is the growth over
the built model and its inputs while stepping: on CUDA torch.cuda.max_memory_allocated over the timed steps (after
the warm-up, whose cuBLAS workspace is not the model's); on CPU the process's peak resident set (Linux VmHWM, reset
after the build) over warm-up and timed steps, which also counts allocator slack.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import multiprocessing
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.models.registry import MODEL_NAMES, build_model, model_classes, recipe
from benchmarks.speed.report import RESULTS_DIR, device_name, device_slug, synchronize, write_json

DATASET = "weather"
WEATHER_CHANNELS = 21
WEATHER_TIME_FEATURES = 4  # timeF features at TSLib's default freq 'h', which its weather scripts keep


@dataclass(frozen=True)
class BenchSettings:
    """What every model is measured at."""

    device: str = "cpu"
    seq_len: int = 96
    pred_len: int = 96
    batch_size: int = 32
    warmup_steps: int = 2
    timed_steps: int = 5


@dataclass
class ModelCost:
    """One model's measured cost; status "skipped" (with a note) when the model cannot be imported."""

    model: str
    status: str
    note: str = ""
    parameters: int | None = None
    ms_per_step_median: float | None = None
    ms_per_step_min: float | None = None
    peak_step_memory_mib: float | None = None
    model_settings: dict[str, Any] | None = None


def _process_status_mib(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM), in MiB."""
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), flags=re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field}; the CPU memory measurement needs Linux")
    return int(match.group(1)) / 1024


def _reset_resident_peak() -> float:
    """Lower the kernel's peak-RSS mark to the current RSS (Linux >= 4.0) and return that RSS in MiB."""
    Path("/proc/self/clear_refs").write_text("5")
    return _process_status_mib("VmRSS")


def measure_model(name: str, settings: BenchSettings) -> ModelCost:
    """Time `settings.timed_steps` forward+backward steps of model `name` on random weather-shaped batches."""
    try:
        model_classes(name)
    except ImportError as error:
        return ModelCost(model=name, status="skipped", note=f"not importable: {error}")
    device = torch.device(settings.device)
    torch.manual_seed(0)
    overrides = recipe(name, DATASET, settings.pred_len).model
    model, config = build_model(name, settings.seq_len, settings.pred_len, WEATHER_CHANNELS, overrides)
    model.to(device).train()
    x = torch.randn(settings.batch_size, settings.seq_len, WEATHER_CHANNELS, device=device)
    x_mark = torch.randn(settings.batch_size, settings.seq_len, WEATHER_TIME_FEATURES, device=device)
    y = torch.randn(settings.batch_size, settings.pred_len, WEATHER_CHANNELS, device=device)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        forecast, aux_loss = model(x, x_mark)
        loss = torch.nn.functional.mse_loss(forecast, y) + aux_loss
        loss.backward()

    if device.type == "cpu":
        # from before the warm-up: memory freed after a step stays with the process, so later steps add nothing
        baseline_mib = _reset_resident_peak()
    for _ in range(settings.warmup_steps):
        step()
    model.zero_grad(set_to_none=True)
    synchronize(device)
    if device.type == "cuda":
        # from after the warm-up: its one-time allocations (the cuBLAS workspace) are not the model's
        torch.cuda.reset_peak_memory_stats(device)
        baseline_mib = torch.cuda.memory_allocated(device) / 2**20
    times_ms = []
    for _ in range(settings.timed_steps):
        start = time.perf_counter()
        step()
        synchronize(device)
        times_ms.append((time.perf_counter() - start) * 1000)
    if device.type == "cuda":
        peak_mib = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_mib = _process_status_mib("VmHWM")
    return ModelCost(
        model=name,
        status="ok",
        parameters=sum(parameter.numel() for parameter in model.parameters()),
        ms_per_step_median=round(statistics.median(times_ms), 3),
        ms_per_step_min=round(min(times_ms), 3),
        peak_step_memory_mib=round(peak_mib - baseline_mib, 1),
        model_settings=asdict(config),
    )


def run_benchmark(models: tuple[str, ...], settings: BenchSettings) -> dict[str, Any]:
    """Measure each model in its own fresh process and return the report written to JSON."""
    costs = []
    for name in models:
        # a fresh spawned process per model: clean peak-memory counters and no state shared between models
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            cost = pool.submit(measure_model, name, settings).result()
        print(_format_row(cost), flush=True)
        costs.append(asdict(cost))
    return {
        "benchmark": "model_bench",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(torch.device(settings.device)),
        "device_type": torch.device(settings.device).type,
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "dataset": DATASET,
        "enc_in": WEATHER_CHANNELS,
        "time_features": WEATHER_TIME_FEATURES,
        "settings": asdict(settings),
        "peak_memory_method": "torch.cuda.max_memory_allocated" if settings.device.startswith("cuda")
        else "VmHWM growth",
        "models": costs,
    }


def _format_row(cost: ModelCost) -> str:
    if cost.status != "ok":
        return f"{cost.model:>13}  skipped: {cost.note}"
    return (f"{cost.model:>13}  {cost.parameters:>11,} params  {cost.ms_per_step_median:>9.1f} ms/step (median)  "
            f"{cost.peak_step_memory_mib:>8.1f} MiB peak")


def main(argv: list[str] | None = None) -> None:
    """Measure the models `argv` names, each in a fresh process, and write the JSON report."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.speed.model_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    parser.add_argument("--models", nargs="+", choices=MODEL_NAMES, default=list(MODEL_NAMES))
    parser.add_argument("--pred-len", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path (default benchmarks/results/models_<device>.json)")
    args = parser.parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {device}: no CUDA GPU is visible to PyTorch; use --device cpu")
    if min(args.pred_len, args.batch_size, args.steps) < 1 or args.warmup < 0:
        parser.error("--pred-len, --batch-size and --steps must be positive and --warmup not negative")
    settings = BenchSettings(device=device, pred_len=args.pred_len, batch_size=args.batch_size,
                             warmup_steps=args.warmup, timed_steps=args.steps)
    report = run_benchmark(tuple(args.models), settings)
    out = args.out or RESULTS_DIR / f"models_{device_slug(torch.device(device))}.json"
    write_json(out, report)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
