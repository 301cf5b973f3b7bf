"""Epoch-time benchmark of training on weather: MixMamba (official ETTh1-script-like config) and PatchTST (weather
recipe), timed through the real engine; writes benchmarks/results/train_<device>.json.

    python -m benchmarks.speed.train_bench --limit-train-batches 20     # CPU: time 20 batches, extrapolate an epoch
    python -m benchmarks.speed.train_bench --device cuda --bf16         # GPU: whole epochs
"""
from __future__ import annotations

import argparse
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file

from benchmarks.data.files import DatasetFile, resolve_dataset
from benchmarks.data.protocol import load_forecast_data
from benchmarks.experiment import resolve_experiment
from benchmarks.speed.report import RESULTS_DIR, device_name, device_slug, write_json
from benchmarks.training.artifacts import WEIGHTS_FILE
from benchmarks.training.callbacks import EpochReport, TrainingCallback
from benchmarks.training.engine import resolve_device, run_experiment


@dataclass(frozen=True)
class TrainCase:
    """A benchmarked model: registry name and settings (`model.x`, `train.x`) over its recipe."""

    model: str
    settings: Mapping[str, Any] = field(default_factory=dict)


# The MixMamba ETTh1 script's model (d_model 64, 2 experts, top-2, batch 32); the experts run the official d_state 8.
# PatchTST takes the weather recipe as it stands.
CASES = {
    "mixmamba": TrainCase("mixmamba", {"model.d_model": 64, "model.num_experts": 2, "model.top_k": 2,
                                       "model.d_state": 8, "model.expand": 2, "model.d_conv": 4,
                                       "train.batch_size": 32}),
    "patchtst": TrainCase("patchtst"),
}


class EpochRecorder(TrainingCallback):
    """Keeps every epoch's report."""

    def __init__(self) -> None:
        self.reports: list[EpochReport] = []

    def on_epoch(self, report: EpochReport) -> None:
        self.reports.append(report)


def bench_model(model: str, *, data: DatasetFile, pred_len: int, device: str, limit_train_batches: int | None,
                bf16: bool, compile_model: bool, epochs: int) -> dict[str, Any]:
    """Train `epochs` epochs (the first warms up) and report the last one's speed and the epoch time it implies."""
    settings = {**CASES[model].settings, "train.epochs": epochs, "train.lradj": "constant", "train.patience": epochs,
                "train.limit_train_batches": limit_train_batches, "train.limit_eval_batches": 1, "train.bf16": bf16,
                "train.compile": compile_model}
    experiment = resolve_experiment(model, data, pred_len=pred_len, settings=settings, device=device)
    recorder = EpochRecorder()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mixbench-bench-") as artifacts:
        run_experiment(experiment, callbacks=[recorder], artifact_dir=Path(artifacts))
        weights = load_file(Path(artifacts) / WEIGHTS_FILE)
        parameters = sum(value.numel() for value in weights.values())
    wall = time.perf_counter() - started
    windows = load_forecast_data(data, experiment.protocol).train.num_windows
    batch_size = experiment.train.batch_size
    batches_per_epoch = math.ceil(windows / batch_size)
    timed_batches = batches_per_epoch if limit_train_batches is None else min(batches_per_epoch, limit_train_batches)
    speed = recorder.reports[-1].samples_per_s
    return {
        "model": model,
        "model_config": experiment.model_config_dict(),
        "batch_size": batch_size,
        "parameters": parameters,
        "train_windows": windows,
        "batches_per_epoch": batches_per_epoch,
        "timed_batches": timed_batches,
        "extrapolated": timed_batches < batches_per_epoch,
        "samples_per_s": speed,
        "epoch_train_seconds": windows / speed,
        "seconds_per_batch": batch_size / speed,
        "warmup_epoch_samples_per_s": recorder.reports[0].samples_per_s,
        "wall_seconds": wall,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Benchmark the models `argv` names, print a line each and write the JSON report; returns it."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.speed.train_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mixmamba,patchtst", help="comma-separated: mixmamba, patchtst")
    parser.add_argument("--dataset", default="weather")
    parser.add_argument("--pred-len", type=int, default=96)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--data-dir", default=None, help="default: $MIXBENCH_DATA_DIR, else ./dataset")
    parser.add_argument("--limit-train-batches", type=int, default=None,
                        help="time only this many batches per epoch and extrapolate (CPU); default: whole epochs")
    parser.add_argument("--epochs", type=int, default=2, help="epochs run; the last one is reported (default 2)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--output", type=Path, default=None, help="default: benchmarks/results/train_<device>.json")
    args = parser.parse_args(argv)
    models = [item.strip() for item in args.models.split(",") if item.strip()]
    unknown = [model for model in models if model not in CASES]
    if unknown:
        parser.error(f"--models: {unknown[0]!r} has no benchmark case; use {', '.join(CASES)}")

    device = resolve_device(args.device)
    data = resolve_dataset(args.dataset, args.data_dir)
    rows = []
    for model in models:
        row = bench_model(model, data=data, pred_len=args.pred_len, device=str(device),
                          limit_train_batches=args.limit_train_batches, bf16=args.bf16, compile_model=args.compile,
                          epochs=args.epochs)
        rows.append(row)
        print(f"{model:9s} {row['samples_per_s']:10.1f} samples/s  {row['seconds_per_batch'] * 1000:8.1f} ms/batch  "
              f"epoch {row['epoch_train_seconds']:8.1f} s{' (extrapolated)' if row['extrapolated'] else ''}  "
              f"[{row['timed_batches']}/{row['batches_per_epoch']} batches of {row['batch_size']}, "
              f"{row['parameters']:,} parameters]", flush=True)
    report = {
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "dataset": data.name,
        "pred_len": args.pred_len,
        "bf16": args.bf16,
        "compile": args.compile,
        "limit_train_batches": args.limit_train_batches,
        "results": rows,
    }
    output = args.output or RESULTS_DIR / f"train_{device_slug(device)}.json"
    write_json(output, report)
    print(f"wrote {output}")
    return report


if __name__ == "__main__":
    main()
