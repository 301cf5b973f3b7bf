"""Epoch-time benchmark of training on weather: MixMamba (official ETTh1-script-like config) and PatchTST (weather
recipe), timed through the real engine; writes benchmarks/results/train_<device>.json.

    python -m benchmarks.train_bench --limit-train-batches 20     # CPU: time 20 batches, extrapolate an epoch
    python -m benchmarks.train_bench --device cuda --bf16         # GPU: whole epochs
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from benchmarks.data import DataProtocol, load_forecast_data
from benchmarks.engine import EpochReport, ExperimentSpec, resolve_device, run_experiment

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# The MixMamba ETTh1 script's model (d_model 64, 2 experts, top-2, batch 32); the experts run the official d_state 8.
# PatchTST takes the weather recipe as it stands.
CASES: dict[str, dict[str, Any]] = {
    "mixmamba": {"model_overrides": {"d_model": 64, "num_experts": 2, "top_k": 2, "d_state": 8, "expand": 2,
                                     "d_conv": 4},
                 "train_overrides": {"batch_size": 32}},
    "patchtst": {"model_overrides": {}, "train_overrides": {}},
}


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name from /proc/cpuinfo (falling back to the platform's)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bench_model(model: str, *, dataset: str, pred_len: int, device: str, data_dir: str | None,
                limit_train_batches: int | None, bf16: bool, compile_model: bool, epochs: int) -> dict[str, Any]:
    """Train `epochs` epochs (the first warms up) and report the last one's speed and the epoch time it implies."""
    case = CASES[model]
    train = {**case["train_overrides"], "epochs": epochs, "lradj": "constant", "patience": epochs,
             "limit_train_batches": limit_train_batches, "limit_eval_batches": 1, "bf16": bf16,
             "compile": compile_model}
    spec = ExperimentSpec(dataset=dataset, model=model, pred_len=pred_len, device=device, data_dir=data_dir,
                          model_overrides=dict(case["model_overrides"]), train_overrides=train)
    reports: list[EpochReport] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mixbench-bench-") as artifacts:
        result = run_experiment(spec, on_epoch=reports.append, artifact_dir=Path(artifacts))
        weights = load_file(Path(artifacts) / "model" / "weights.safetensors")
        parameters = sum(value.numel() for value in weights.values())
    wall = time.perf_counter() - started
    data = load_forecast_data(dataset, DataProtocol(seq_len=spec.seq_len, pred_len=pred_len), data_dir=data_dir)
    windows = data.train.num_windows
    batch_size = result.train_config["batch_size"]
    batches_per_epoch = math.ceil(windows / batch_size)
    timed_batches = batches_per_epoch if limit_train_batches is None else min(batches_per_epoch, limit_train_batches)
    speed = reports[-1].samples_per_s
    return {
        "model": model,
        "model_config": result.model_config,
        "batch_size": batch_size,
        "parameters": parameters,
        "train_windows": windows,
        "batches_per_epoch": batches_per_epoch,
        "timed_batches": timed_batches,
        "extrapolated": timed_batches < batches_per_epoch,
        "samples_per_s": speed,
        "epoch_train_seconds": windows / speed,
        "seconds_per_batch": batch_size / speed,
        "warmup_epoch_samples_per_s": reports[0].samples_per_s,
        "wall_seconds": wall,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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

    device = resolve_device(args.device)
    name = device_name(device)
    rows = []
    for model in [item.strip() for item in args.models.split(",") if item.strip()]:
        if model not in CASES:
            parser.error(f"--models: {model!r} has no benchmark case; use {', '.join(CASES)}")
        row = bench_model(model, dataset=args.dataset, pred_len=args.pred_len, device=str(device),
                          data_dir=args.data_dir, limit_train_batches=args.limit_train_batches, bf16=args.bf16,
                          compile_model=args.compile, epochs=args.epochs)
        rows.append(row)
        print(f"{model:9s} {row['samples_per_s']:10.1f} samples/s  {row['seconds_per_batch'] * 1000:8.1f} ms/batch  "
              f"epoch {row['epoch_train_seconds']:8.1f} s{' (extrapolated)' if row['extrapolated'] else ''}  "
              f"[{row['timed_batches']}/{row['batches_per_epoch']} batches of {row['batch_size']}, "
              f"{row['parameters']:,} parameters]", flush=True)
    report = {
        "device": name,
        "device_type": device.type,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "dataset": args.dataset,
        "pred_len": args.pred_len,
        "bf16": args.bf16,
        "compile": args.compile,
        "limit_train_batches": args.limit_train_batches,
        "results": rows,
    }
    slug = "cpu" if device.type == "cpu" else re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    output = args.output or RESULTS_DIR / f"train_{slug}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {output}")
    return report


if __name__ == "__main__":
    main()
