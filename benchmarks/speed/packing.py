"""Trials per hour with k trials packed on one GPU: k processes started together, each one whole engine run of a
benchmark config capped at 1/k of the GPU's memory and of the CPU threads; the wall time of all k gives the rate.

Each trial is its own process because that is what packing measures (start-up, memory caps and contention
included). `python -m benchmarks.speed.perf --parts pack` starts them; one trial alone, as each child runs it:

    python -m benchmarks.speed.packing request.json result.json

where request.json holds a PackedTrial's fields, e.g. {"config": "mixmamba-small", "device": "cuda",
"epochs": 1, "memory_fraction": 0.125, "threads": 2, "data_dir": "/data", "limit_batches": null}.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.data.files import resolve_data_dir, resolve_dataset
from benchmarks.speed.cases import CONFIGS, DATASET
from benchmarks.speed.engine_runs import engine_run
from benchmarks.speed.report import write_json
from benchmarks.training.engine import resolve_device

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class PackedTrial:
    """One packed trial: `epochs` epochs of benchmark config `config` on weather, in a process limited to
    `memory_fraction` of the GPU's memory and `threads` CPU threads."""

    config: str
    device: str
    epochs: int
    memory_fraction: float = 1.0
    threads: int = 1
    data_dir: str | None = None
    limit_batches: int | None = None  # smoke tests: caps every epoch's training and evaluation batches


def pack_trials(k: int, data_dir: str | None, device: torch.device, epochs: int,
                limit_batches: int | None = None, config_name: str = "mixmamba-small") -> dict[str, Any]:
    """Wall time of k concurrent processes, each one trial of `config_name` (`epochs` epochs of weather through
    run_experiment: train, validation, test, artifacts) capped at 1/k of the GPU's memory; trials/hour from it."""
    threads = max(1, (os.cpu_count() or 1) // k)
    trial = PackedTrial(config=config_name, device=str(device), epochs=epochs, memory_fraction=1 / k,
                        threads=threads, data_dir=str(resolve_data_dir(data_dir).resolve()),
                        limit_batches=limit_batches)
    with tempfile.TemporaryDirectory(prefix="mixbench-pack-") as folder:
        request = Path(folder) / "request.json"
        write_json(request, dataclasses.asdict(trial))
        results = [Path(folder) / f"worker{index}.json" for index in range(k)]
        logs = [Path(folder) / f"worker{index}.log" for index in range(k)]
        handles = [log.open("w") for log in logs]
        started = time.perf_counter()
        processes = [subprocess.Popen([sys.executable, "-m", "benchmarks.speed.packing", str(request), str(result)],
                                      stdout=handle, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
                     for result, handle in zip(results, handles)]
        codes = [process.wait() for process in processes]
        wall = time.perf_counter() - started
        for handle in handles:
            handle.close()
        workers = []
        for code, result, log in zip(codes, results, logs):
            if code != 0 or not result.is_file():
                raise RuntimeError(f"a packed trial exited {code}: {log.read_text()[-600:]}")
            workers.append(json.loads(result.read_text()))
    return {"k": k, "config": config_name, "epochs_per_trial": epochs, "threads_per_trial": threads,
            "memory_fraction": 1 / k, "wall_seconds": wall, "trials_per_hour": k * 3600 / wall,
            "worker_run_seconds": [worker["run_seconds"] for worker in workers],
            "worker_epoch_seconds": [worker["epoch_seconds"] for worker in workers],
            "worker_peak_gpu_memory_mb": [worker["peak_gpu_memory_mb"] for worker in workers],
            "test_mse": [worker["test_mse"] for worker in workers]}


def run_packed_trial(trial: PackedTrial) -> dict[str, Any]:
    """One packed trial in this process: its run time (from this call on), epoch times, test MSE and peak GPU
    memory."""
    started = time.perf_counter()
    torch.set_num_threads(trial.threads)
    device = resolve_device(trial.device)
    if device.type == "cuda" and trial.memory_fraction < 1:
        torch.cuda.set_per_process_memory_fraction(trial.memory_fraction, torch.cuda.current_device())
    settings = {"train.epochs": trial.epochs, "train.limit_train_batches": trial.limit_batches,
                "train.limit_eval_batches": trial.limit_batches}
    run = engine_run(trial.config, resolve_dataset(DATASET, trial.data_dir), device, settings, "packed")
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"run_seconds": time.perf_counter() - started, "epoch_seconds": run["epoch_seconds"],
            "test_mse": run["test_mse"], "peak_gpu_memory_mb": peak}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the packed trial described in a request file and write its result as JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.speed.packing", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("request", type=Path, help="JSON file with a PackedTrial's fields")
    parser.add_argument("result", type=Path, help="where to write the trial's timings as JSON")
    args = parser.parse_args(argv)
    trial = PackedTrial(**json.loads(args.request.read_text()))
    if trial.config not in CONFIGS:
        parser.error(f"request: config {trial.config!r} is unknown; use {', '.join(CONFIGS)}")
    outcome = run_packed_trial(trial)
    write_json(args.result, outcome)
    return outcome


if __name__ == "__main__":
    main()
