"""Fused training arrays on one device: ms per member-step of K fused members against one model alone, peak memory
per member, fused members against the same runs alone (exactness), and trials/hour of whole trials trained K at a
time against one at a time, and whole `mixbench search` runs fused and not (part `search`). Writes one JSON report.

    python -m benchmarks.speed.fused --data-dir ../shared/data --output benchmarks/results/fused_h200.json
"""
from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.data.files import resolve_dataset
from benchmarks.data.protocol import WindowBatch
from benchmarks.speed.cases import CONFIGS, DATASET, PROTOCOL, load_bench_data, resolve_case
from benchmarks.speed.packing import pack_trials
from benchmarks.speed.report import RESULTS_DIR, device_slug, environment, synchronize, write_json
from benchmarks.speed.searches import search_throughput
from benchmarks.speed.step import ROTATION, time_steps
from benchmarks.training.engine import resolve_device, run_experiment, seed_everything
from benchmarks.training.evaluation import target_channels
from benchmarks.training.fused_engine import run_fused
from benchmarks.training.member_stack import MemberStack
from benchmarks.training.stacked_adam import StackedAdam
from benchmarks.training.step import FusedTrainStep, TrainStep, make_optimizer

# (config, members per array) the step part measures; K = 1 runs the engine's own single-model step too.
STEP_CASES = {"mixmamba-small": (1, 4, 16, 32), "dlinear": (1, 16, 64), "patchtst": (1, 2, 4, 8)}
TRIAL_CASES = {"mixmamba-small": 16, "dlinear": 64, "patchtst": 8}


def member_experiments(config_name: str, members: int, device: torch.device, settings: dict[str, Any] | None = None,
                       data_dir: str | None = None) -> list:
    """`members` experiments of a benchmark config that differ as a search's trials do: seeds and learning rates."""
    file = resolve_dataset(DATASET, data_dir)
    base = resolve_case(CONFIGS[config_name], file, device, settings)
    rates = [base.train.learning_rate * factor for factor in (1.0, 0.5, 2.0, 0.25)]
    return [base.with_seed(base.seed + k).with_settings({"train.learning_rate": rates[k % len(rates)]})
            for k in range(members)]


def step_row(config_name: str, members: int, bf16: bool, device: torch.device, data: Any, steps: int,
             warmup: int, data_dir: str | None) -> dict[str, Any]:
    """ms per step of `members` fused members (CUDA graph), per member, and peak memory; K = 1 also times the
    engine's single-model TrainStep."""
    experiments = member_experiments(config_name, members, device, {"train.bf16": bf16}, data_dir)
    train = experiments[0].train
    target = target_channels(PROTOCOL.features)
    models, streams = [], []
    for experiment in experiments:
        seed_everything(experiment.seed)
        models.append(experiment.build_model().to(device))
        streams.append(torch.Generator(device).manual_seed(experiment.seed) if device.type == "cuda"
                       else torch.Generator().set_state(torch.get_rng_state()))
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    base_memory = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    stack = MemberStack(models)
    optimizer = StackedAdam(list(stack.params.values()), [e.train.learning_rate for e in experiments],
                            [e.train.weight_decay for e in experiments], [e.train.optimizer == "adamw"
                                                                          for e in experiments],
                            capturable=device.type == "cuda")
    step = FusedTrainStep(stack, optimizer, [e.train.loss for e in experiments], target, train.batch_size,
                          bf16=bf16, cuda_graph=device.type == "cuda")
    shuffles = [torch.Generator().manual_seed(e.seed) for e in experiments]
    batches = list(itertools.islice(data.train.iter_member_batches(train.batch_size, shuffles), ROTATION))

    def fused_step(batch: WindowBatch) -> torch.Tensor:
        return step(batch, stack.draw(batch.x.shape[1], streams))

    for batch in batches[:1] * warmup:
        fused_step(batch)
    timing = time_steps(fused_step, batches, steps, device)
    peak = (torch.cuda.max_memory_allocated(device) - base_memory) / 2**20 if device.type == "cuda" else None
    row = {"config": config_name, "members": members, "bf16": bf16, "batch_size": train.batch_size,
           "graphed": step.graphed, "capture_error": step.capture_error, **timing,
           "ms_per_member_step": timing["ms_per_step"] / members, "peak_memory_mb": peak}
    if members == 1:
        seed_everything(experiments[0].seed)
        model = experiments[0].build_model().to(device)
        single = TrainStep(model, make_optimizer(model, train, device), train.loss, target, train.batch_size,
                           bf16=bf16, cuda_graph=device.type == "cuda")
        plain = [WindowBatch(*(t[0] for t in batch)) for batch in batches]
        for batch in plain[:1] * warmup:
            single(batch)
        row["single_model_ms_per_step"] = time_steps(single, plain, steps, device)["ms_per_step"]
    return row


def exactness(config_name: str, members: int, device: torch.device, epochs: int, limit: int | None,
              data_dir: str | None) -> dict[str, Any]:
    """Fused members against the same experiments alone (dropout 0, float32): each one's validation MSE per epoch
    and test MSE, and the largest relative gap."""
    settings = {"train.epochs": epochs, "train.limit_train_batches": limit, "train.limit_eval_batches": limit}
    if "dropout" in member_experiments(config_name, 1, device, settings, data_dir)[0].model_config_dict():
        settings["model.dropout"] = 0.0
    experiments = member_experiments(config_name, members, device, settings, data_dir)
    with tempfile.TemporaryDirectory(prefix="mixbench-fused-") as folder:
        fused = run_fused(experiments, artifact_dirs=[Path(folder) / f"f{k}" for k in range(members)])
        alone = [run_experiment(e, artifact_dir=Path(folder) / f"a{k}") for k, e in enumerate(experiments)]
    rows = []
    for ours, reference in zip(fused, alone):
        val = [(a["val_mse"], b["val_mse"]) for a, b in zip(ours.history, reference.history)]
        rows.append({"seed": ours.experiment.seed, "learning_rate": ours.experiment.train.learning_rate,
                     "val_mse_fused": [a for a, _ in val], "val_mse_alone": [b for _, b in val],
                     "test_mse_fused": ours.test_mse, "test_mse_alone": reference.test_mse,
                     "final_val_relative_gap": abs(val[-1][0] / val[-1][1] - 1)})
    return {"config": config_name, "members": members, "epochs": epochs, "limit_batches": limit, "runs": rows,
            "max_final_val_relative_gap": max(row["final_val_relative_gap"] for row in rows)}


def trials_per_hour(config_name: str, members: int, device: torch.device, epochs: int, limit: int | None,
                    data_dir: str | None) -> dict[str, Any]:
    """Whole trials (train `epochs` epochs, validate, test, artifacts), `members` fused at once against one alone."""
    settings = {"train.epochs": epochs, "train.patience": epochs, "train.limit_train_batches": limit,
                "train.limit_eval_batches": limit}
    experiments = member_experiments(config_name, members, device, settings, data_dir)
    with tempfile.TemporaryDirectory(prefix="mixbench-fused-") as folder:
        started = time.perf_counter()
        run_experiment(experiments[0], artifact_dir=Path(folder) / "alone")
        alone = time.perf_counter() - started
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        results = run_fused(experiments, artifact_dirs=[Path(folder) / f"f{k}" for k in range(members)])
        fused = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"config": config_name, "members": members, "epochs": epochs, "limit_batches": limit,
            "one_trial_seconds": alone, "fused_seconds": fused, "one_at_a_time_trials_per_hour": 3600 / alone,
            "fused_trials_per_hour": members * 3600 / fused, "speedup": members * alone / fused,
            "fused_peak_memory_mb": peak, "test_mse": [r.test_mse for r in results]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.speed.fused", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help="folder holding weather/weather.csv")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--parts", default="steps,exact,trials",
                        help="comma list of steps, exact, trials, pack, search")
    parser.add_argument("--configs", default=",".join(STEP_CASES), help="benchmark configs, e.g. mixmamba-small")
    parser.add_argument("--members", default=None, help="K values for the steps part (default per config)")
    parser.add_argument("--steps", type=int, default=100, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per trial (trials part)")
    parser.add_argument("--limit-batches", type=int, default=None, help="smoke runs: batches per epoch and pass")
    parser.add_argument("--pack", type=int, default=16, help="processes packed in the pack part")
    parser.add_argument("--searches", default="auto@0.25,auto@1,off@1",
                        help="search part: FUSE@GPU_SHARE runs of `mixbench search` (FUSE as --fuse)")
    parser.add_argument("--search-trials", type=int, default=64)
    parser.add_argument("--search-budget", type=float, default=540.0, help="seconds of each search's time budget")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    configs = args.configs.split(",")
    parts = args.parts.split(",")
    output = args.output or RESULTS_DIR / f"fused_{device_slug(device, vendor=False)}.json"
    report: dict[str, Any] = {"environment": environment(device), "dataset": DATASET, "protocol": vars(PROTOCOL)}
    if "steps" in parts:
        data = load_bench_data(resolve_dataset(DATASET, args.data_dir), device).windows
        report["steps"] = []
        for config_name in configs:
            counts = [int(k) for k in args.members.split(",")] if args.members else STEP_CASES[config_name]
            for bf16 in (False, True) if config_name.startswith("mixmamba") else (False,):
                for members in counts:
                    try:
                        row = step_row(config_name, members, bf16, device, data, args.steps, args.warmup,
                                       args.data_dir)
                    except RuntimeError as error:  # one failing row must not lose the others' figures
                        report["steps"].append({"config": config_name, "members": members, "bf16": bf16,
                                                "error": str(error).splitlines()[0]})
                        print(f"steps {config_name} K={members} bf16={bf16}: FAILED {error}", flush=True)
                        continue
                    report["steps"].append(row)
                    print(f"steps {config_name} K={members} bf16={bf16}: {row['ms_per_step']:.3f} ms/step, "
                          f"{row['ms_per_member_step']:.4f} ms/member-step, peak {row['peak_memory_mb']} MB",
                          flush=True)
    if "exact" in parts:
        report["exactness"] = [exactness(name, 4, device, 2, args.limit_batches, args.data_dir)
                               for name in ("mixmamba-small", "dlinear")]
        for row in report["exactness"]:
            print(f"exact {row['config']}: max final val gap {row['max_final_val_relative_gap']:.2e}", flush=True)
    if "trials" in parts:
        report["trials"] = []
        for config_name in configs:
            row = trials_per_hour(config_name, TRIAL_CASES[config_name], device, args.epochs, args.limit_batches,
                                  args.data_dir)
            report["trials"].append(row)
            print(f"trials {config_name} K={row['members']}: fused {row['fused_trials_per_hour']:.0f}/h, one at a "
                  f"time {row['one_at_a_time_trials_per_hour']:.0f}/h ({row['speedup']:.1f}x)", flush=True)
    if "pack" in parts:
        report["packed"] = pack_trials(args.pack, args.data_dir, device, args.epochs, args.limit_batches)
        print(f"packed {args.pack}: {report['packed']['trials_per_hour']:.0f} trials/h", flush=True)
    if "search" in parts:
        report["searches"] = []
        with tempfile.TemporaryDirectory(prefix="mixbench-fused-search-") as workdir:
            for spec in args.searches.split(","):
                fuse, _, share = spec.partition("@")
                row = search_throughput(float(share), args.search_trials, args.epochs, args.search_budget,
                                        args.data_dir, Path(workdir), fuse=fuse)
                report["searches"].append(row)
                write_json(output, report)  # each search is minutes: keep what is done if the call is cut
                print(f"search --fuse {fuse} --gpus-per-trial {share}: {row['trials_per_hour']:.0f} trials/h "
                      f"({row['trials_finished']} finished, {row['trials_stopped_early']} stopped, "
                      f"{row['trials_failed']} failed in {row['wall_seconds']:.0f} s)", flush=True)
    write_json(output, report)
    print(f"wrote {output}")
    return report


if __name__ == "__main__":
    main()
