"""One search, and one benchmark grid, spread by Ray over 1, 2, 4 GPUs of one host (issue 23): throughput, scaling
efficiency, and where every trial and fused group ran.

Each GPU count runs in a fresh process that sees only the first n of the GPUs this one may use (CUDA_VISIBLE_DEVICES)
and starts Ray with them and n times the host's CPUs per GPU, so one call measures 1, 2 and 4 GPUs on one machine:

    python -m benchmarks.speed.scaling --gpus 1,2,4 --out benchmarks/results/scaling_h200x4.json

Part `search`: the same `mixbench search` (weather, MixMamba, fused groups, a fixed number of trials, no time budget)
at each count: trials/hour, member-epochs/hour, scaling efficiency = throughput / (n x the one-GPU throughput), and
placement read back from MLflow: each trial run's `gpu_ids` tag must name exactly one GPU, the members of a fused
group one and the same GPU (ids and CUDA device UUID), and no trial may fail. Part `benchmark`: `mixbench benchmark`
of a grid at each count, wall time against one GPU. `--simulated-gpus` gives Ray GPUs that are not there (training
runs on the CPU): how CI checks the placement and the JSON on a machine without GPUs.

The defaults are sized for a device call of 10 minutes at one GPU (32 trials x 3 epochs; the paper grid's first
horizon, 24 runs). The JSON is written after each count, so a call cut short keeps the counts it finished. When one
call cannot hold every count, run `--gpus 1`, then `--gpus 2,4` with the same settings and the first call's JSON
at `--out` (a path in the checkout, carried): the second keeps the rows of the counts it does not run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.data.files import resolve_data_dir
from benchmarks.grid.runner import BenchmarkConfig, run_benchmark
from benchmarks.speed.searches import summarize_search
from search.config import SearchConfig
from search.groups import tune_trial_of
from search.runner import run_search
from search.trial import CUDA_DEVICE_KEY, GPU_IDS_KEY
from search.trial_runs import TRIAL_ID_TAG, TRIAL_KIND

PARTS = ("search", "benchmark")
RESULT_FILE = "result.json"   # a child's row, in its run folder


@dataclass(frozen=True)
class ScalingSettings:
    """What every GPU count runs; the same for all, so that only the count changes."""

    trials: int = 32
    epochs: int = 3
    fuse: str = "auto"
    gpus_per_trial: float = 0.5
    dataset: str = "weather"
    space: str | None = None
    benchmark_datasets: str = "weather,ETTh1"
    benchmark_models: str = "mixmamba,patchtst,itransformer,dlinear"
    benchmark_horizons: str = "96"
    benchmark_seeds: int = 3
    limit_train_batches: int | None = None
    limit_eval_batches: int | None = None
    data_dir: str | None = None


def gpu_placement(tracking_uri: str, parent_run_id: str) -> dict[str, Any]:
    """Where the search's trials ran, from the placement tags of each trial run under `parent_run_id` (the GPU ids Ray
    assigned, and the UUID of the CUDA device the trial trained on: "" on a CPU, so with simulated GPUs only the ids
    are checked): runs per GPU, runs on other than one GPU, Tune trials (fused groups) on several."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    trials = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}' and "
                                                 f"tags.`mixbench.kind` = '{TRIAL_KIND}'", max_results=10_000)
    per_gpu: dict[str, int] = {}
    not_one_gpu: list[str] = []
    groups: dict[str, set[tuple[str, str]]] = {}
    for run in trials:
        gpus, device = run.data.tags.get(GPU_IDS_KEY, ""), run.data.tags.get(CUDA_DEVICE_KEY, "")
        per_gpu[gpus] = per_gpu.get(gpus, 0) + 1
        if len([gpu for gpu in gpus.split(",") if gpu]) != 1:
            not_one_gpu.append(run.info.run_name)
        groups.setdefault(tune_trial_of(run.data.tags.get(TRIAL_ID_TAG, "")), set()).add((gpus, device))
    straddling = sorted(group for group, places in groups.items() if len(places) > 1)
    devices = {device for places in groups.values() for _, device in places} - {""}
    return {"trial_runs": len(trials), "runs_per_gpu": dict(sorted(per_gpu.items())), "cuda_devices": len(devices),
            "runs_not_on_one_gpu": not_one_gpu, "groups": len(groups), "groups_on_several_gpus": straddling,
            "confined": bool(trials) and not not_one_gpu and not straddling}


def run_count(gpus: int, part: str, settings: ScalingSettings, workdir: Path, simulated: bool,
              cpus_per_gpu: int) -> dict[str, Any]:
    """One GPU count's part, in this process: Ray started with `gpus` GPUs (real ones from CUDA_VISIBLE_DEVICES, or
    simulated) and `cpus_per_gpu` CPUs for each, the search or benchmark run, timed, summarised. Ray is started
    here rather than by `benchmarks.ray_session.connect`, which cannot be told how many GPUs to offer."""
    import ray

    cpus = gpus * cpus_per_gpu
    ray.init(num_gpus=gpus, num_cpus=cpus, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        tracking_uri = f"sqlite:///{workdir / 'mlflow.db'}"
        data_dir = str(resolve_data_dir(settings.data_dir).resolve())
        if part == "search":
            return _search(gpus, settings, workdir, tracking_uri, data_dir) | {"cpus": cpus}
        return _benchmark(gpus, settings, tracking_uri, data_dir, simulated) | {"cpus": cpus}
    finally:
        ray.shutdown()


def visible_gpus() -> list[str]:
    """The GPUs this process may use: CUDA_VISIBLE_DEVICES's entries, else every device torch counts."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [gpu for gpu in listed.split(",") if gpu.strip()]
    import torch

    return [str(gpu) for gpu in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def _search(gpus: int, settings: ScalingSettings, workdir: Path, tracking_uri: str, data_dir: str) -> dict[str, Any]:
    config = SearchConfig(dataset=settings.dataset, space=settings.space, trials=settings.trials,
                          epochs=settings.epochs, gpus_per_trial=settings.gpus_per_trial, fuse=settings.fuse,
                          time_budget_s=0, name=f"scaling-{gpus}gpu", storage_path=str(workdir / "ray"),
                          tracking_uri=tracking_uri, data_dir=data_dir,
                          limit_train_batches=settings.limit_train_batches,
                          limit_eval_batches=settings.limit_eval_batches)
    started = time.perf_counter()
    outcome = run_search(config)
    wall = time.perf_counter() - started
    return {"gpus": gpus, "interrupted": outcome.interrupted, "counts": outcome.counts,
            **summarize_search(outcome.experiment_dir, outcome.counts, wall),
            "placement": gpu_placement(tracking_uri, outcome.parent_run_id)}


def _benchmark(gpus: int, settings: ScalingSettings, tracking_uri: str, data_dir: str,
               simulated: bool) -> dict[str, Any]:
    config = BenchmarkConfig(datasets=settings.benchmark_datasets.split(","),
                             models=settings.benchmark_models.split(","),
                             horizons=[int(h) for h in settings.benchmark_horizons.split(",")],
                             seeds=settings.benchmark_seeds, suite=f"scaling-{gpus}gpu", tracking_uri=tracking_uri,
                             data_dir=data_dir, limit_train_batches=settings.limit_train_batches,
                             limit_eval_batches=settings.limit_eval_batches, device="cpu" if simulated else "auto")
    started = time.perf_counter()
    outcome = run_benchmark(config, echo=lambda line: None)
    wall = time.perf_counter() - started
    return {"gpus": gpus, "wall_seconds": wall, "runs_logged": len(outcome.logged),
            "cells_failed": [f"{cell.describe()}: {error}" for cell, error in outcome.failed]}


def efficiencies(rows: list[dict[str, Any]], key: str) -> dict[str, float]:
    """throughput / (n x one-GPU throughput) for every count, `key` naming the throughput; higher is better."""
    one = next((row[key] for row in rows if row["gpus"] == 1), None)
    if not one:
        return {}
    return {str(row["gpus"]): row[key] / (row["gpus"] * one) for row in rows}


def wall_efficiencies(rows: list[dict[str, Any]]) -> dict[str, float]:
    """One GPU's wall time over n GPUs' wall time, over n: the benchmark grid's scaling efficiency."""
    one = next((row["wall_seconds"] for row in rows if row["gpus"] == 1), None)
    if not one:
        return {}
    return {str(row["gpus"]): one / row["wall_seconds"] / row["gpus"] for row in rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", default="1,2,4", help="GPU counts, comma-separated, each at most the host's")
    parser.add_argument("--parts", default="search,benchmark", help="comma-separated: " + ", ".join(PARTS))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scaling_h200x4.json"))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mixbench-scaling"))
    parser.add_argument("--simulated-gpus", action="store_true",
                        help="give Ray GPUs that are not there (training on the CPU): placement and JSON checks only")
    parser.add_argument("--cpus-per-gpu", type=int, default=None,
                        help="CPUs Ray gets per GPU (default: the host's CPUs over its GPUs)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # "PART:N:FOLDER": the child process that runs one count
    defaults = ScalingSettings()
    for name in ("trials", "epochs", "benchmark_seeds", "limit_train_batches", "limit_eval_batches"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name))
    parser.add_argument("--gpus-per-trial", type=float, default=defaults.gpus_per_trial)
    for name in ("fuse", "dataset", "space", "benchmark_datasets", "benchmark_models", "benchmark_horizons",
                 "data_dir"):
        parser.add_argument("--" + name.replace("_", "-"), default=getattr(defaults, name))
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    settings = ScalingSettings(**{name: getattr(args, name) for name in asdict(ScalingSettings())})
    if args.one:
        part, count, folder = args.one.split(":")
        row = run_count(int(count), part, settings, Path(folder), args.simulated_gpus, args.cpus_per_gpu)
        (Path(folder) / RESULT_FILE).write_text(json.dumps(row))
        return 0

    counts = [int(count) for count in args.gpus.split(",")]
    parts = [part for part in args.parts.split(",") if part]
    unknown = [part for part in parts if part not in PARTS]
    if unknown or not counts or min(counts) < 1:
        parser.error(f"--parts takes {', '.join(PARTS)} and --gpus positive counts (got {args.parts!r}, {args.gpus!r})")
    if args.simulated_gpus and args.fuse == "auto":
        parser.error("--fuse auto sizes groups by measuring a GPU: give --fuse N or off with --simulated-gpus")
    devices = [str(gpu) for gpu in range(max(counts))] if args.simulated_gpus else visible_gpus()
    if max(counts) > len(devices):
        parser.error(f"--gpus {args.gpus} asks for {max(counts)} GPUs; this machine shows {len(devices)}")
    if args.cpus_per_gpu is None:
        args.cpus_per_gpu = max(1, (os.cpu_count() or 1) // len(devices))
        argv += ["--cpus-per-gpu", str(args.cpus_per_gpu)]
    report: dict[str, Any] = {"settings": asdict(settings), "simulated_gpus": args.simulated_gpus,
                              "cpus_per_gpu": args.cpus_per_gpu, "date": time.strftime("%Y-%m-%d"),
                              "command": " ".join(["python -m benchmarks.speed.scaling", *argv])}
    earlier = json.loads(args.out.read_text()) if args.out.exists() else {}
    same = all(earlier.get(key) == report[key] for key in ("settings", "simulated_gpus", "cpus_per_gpu"))
    if earlier and not same:
        print(f"{args.out} holds runs of other settings: they are replaced", file=sys.stderr)
    report.update({part: earlier[part] for part in PARTS if same and part in earlier and part not in parts})
    run_folder = args.workdir / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"  # fresh: a grid skips finished cells
    for part in parts:
        rows = [row for row in earlier.get(part, {}).get("runs", []) if same and row["gpus"] not in counts]
        for count in counts:
            rows.append(_child(part, count, run_folder / f"{part}-{count}gpu", devices[:count], argv,
                               args.simulated_gpus))
            print(f"{part} on {count} GPU(s): " + json.dumps({k: v for k, v in rows[-1].items() if k != "placement"}),
                  flush=True)
            rows.sort(key=lambda row: row["gpus"])
            report[part] = _summary(part, rows)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2) + "\n")  # after each count: a cut call keeps the others
    return 0


def _summary(part: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    if part == "benchmark":
        return {"runs": rows, "efficiency_wall": wall_efficiencies(rows)}
    return {"runs": rows, "efficiency_trials_per_hour": efficiencies(rows, "trials_per_hour"),
            "efficiency_epochs_per_hour": efficiencies(rows, "epochs_per_hour"),
            "all_confined_and_no_failure": all(row["placement"]["confined"] and row["trials_failed"] == 0
                                               for row in rows)}


def _child(part: str, count: int, folder: Path, devices: list[str], argv: list[str],
           simulated: bool) -> dict[str, Any]:
    """Runs one count in a fresh process that sees only `devices`; it leaves its row in `folder`/RESULT_FILE."""
    env = dict(os.environ)
    if not simulated:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-m", "benchmarks.speed.scaling", *argv, "--one",
                           f"{part}:{count}:{folder}"], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{part} on {count} GPU(s) failed:\n{done.stderr[-3000:]}")
    return json.loads((folder / RESULT_FILE).read_text())


if __name__ == "__main__":
    sys.exit(main())
