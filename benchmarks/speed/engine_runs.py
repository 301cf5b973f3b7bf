"""Whole engine runs of a benchmark config (train, validate, test, artifacts through `run_experiment`): per-epoch times
and test metrics, and the test MSE of the same recipe trained in float32 and in bf16."""
from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import torch

from benchmarks.data.files import DatasetFile
from benchmarks.speed.cases import CONFIGS, resolve_case
from benchmarks.training.engine import run_experiment

PATCHTST_REFERENCE_TEST_MSE = 0.177  # TSLib's PatchTST on weather, horizon 96


def engine_run(config_name: str, file: DatasetFile, device: torch.device, train_settings: Mapping[str, Any],
               label: str) -> dict[str, Any]:
    """A real `run_experiment` of config `config_name` with `train_settings` (`train.x`) on top: its training
    settings, per-epoch times and losses, best epoch, test metrics and wall time."""
    experiment = resolve_case(CONFIGS[config_name], file, device, train_settings)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mixbench-perf-") as artifacts:
        result = run_experiment(experiment, artifact_dir=Path(artifacts))
    return {"config": config_name, "label": label, "train": dataclasses.asdict(experiment.train),
            "epoch_seconds": [row["epoch_seconds"] for row in result.history],
            "train_loss": [row["train_loss"] for row in result.history],
            "val_loss": [row["val_loss"] for row in result.history], "best_epoch": result.best_epoch,
            "test_mse": result.test_mse, "test_mae": result.test_mae, "wall_seconds": time.perf_counter() - started}


def bf16_accuracy(config_name: str, file: DatasetFile, device: torch.device, epochs: int | None,
                  limit_batches: int | None = None) -> dict[str, Any]:
    """Test MSE of the same recipe and seed trained in float32 and under bf16 autocast, and their relative gap
    (for PatchTST also against TSLib's published weather MSE)."""
    settings: dict[str, Any] = {"train.limit_train_batches": limit_batches, "train.limit_eval_batches": limit_batches}
    if epochs is not None:
        settings["train.epochs"] = epochs
    runs = {name: engine_run(config_name, file, device, {**settings, "train.bf16": name == "bf16"}, name)
            for name in ("fp32", "bf16")}
    fp32, bf16 = runs["fp32"]["test_mse"], runs["bf16"]["test_mse"]
    outcome: dict[str, Any] = {"config": config_name, "runs": runs, "bf16_vs_fp32": bf16 / fp32 - 1}
    if config_name == "patchtst":
        outcome.update(reference_test_mse=PATCHTST_REFERENCE_TEST_MSE,
                       fp32_vs_reference=fp32 / PATCHTST_REFERENCE_TEST_MSE - 1,
                       bf16_vs_reference=bf16 / PATCHTST_REFERENCE_TEST_MSE - 1)
    return outcome
