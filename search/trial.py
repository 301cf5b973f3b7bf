"""One search trial as Ray Tune runs it in a worker: train the trial's resolved experiment, report each epoch with a
checkpoint, and resume from the last checkpoint when Ray restarts the trial after a failure or `--resume`.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from benchmarks.errors import SpaceError
from benchmarks.training.callbacks import EpochReport, TrainingCallback
from benchmarks.training.engine import GpuOutOfMemoryError, NonFiniteLossError, run_experiment
from benchmarks.worker_share import WorkerShare
from search.space import EXPERIMENT_KEY, INVALID_KEY
from search.trial_runs import TrialRunCallback, TrialRuns, TrialTracking

FEATURES = "M"
CHECKPOINT_FILE = "state.pt"
DIVERGED_FILE = "diverged.txt"
OUT_OF_MEMORY_FILE = "out_of_memory.txt"
ARTIFACT_DIR = "artifacts"
SEARCH_METRIC = "val_loss_best"
GPU_IDS_KEY = "gpu_ids"   # every report's: the GPUs Ray gave the trial ("0", "" without), tagged on its runs
CUDA_DEVICE_KEY = "cuda_device"   # every report's: the UUID of the CUDA device it trains on ("" without), tagged too
PLACEMENT_KEYS = (GPU_IDS_KEY, CUDA_DEVICE_KEY)


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of one search shares besides its experiment (which comes resolved in its Tune config).

    experiment_dir is the search's folder (absolute; Tune's storage, which every node of a cluster reaches); epochs
    is ASHA's max_t. `tracking` is set only when trials log their own child runs (an http(s) tracking server); with
    a local store the driver logs them. `rungs` names the Ray actor holding ASHA's rungs for fused groups' members.
    """

    experiment_dir: str
    epochs: int
    share: WorkerShare
    tracking: TrialTracking | None = None
    rungs: str | None = None


def run_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """The Ray Tune function trainable: train the experiment the searcher resolved for this trial, reporting every
    epoch.

    Each epoch but the last is reported with a checkpoint (the engine's state, torch.save'd) so ASHA can stop the
    trial and Ray can resume it. The last epoch is reported together with the test metrics and the artifact
    folder, once the run has ended: ASHA stops every trial at max_t, which would otherwise cut off the test.
    A NaN/inf loss raises NonFiniteLossError and running out of GPU memory GpuOutOfMemoryError, so Tune records the
    trial as failed and the search goes on.
    """
    if INVALID_KEY in config:
        raise SpaceError(config[INVALID_KEY])
    experiment = config[EXPERIMENT_KEY]
    trial_dir = Path(tune.get_context().get_trial_dir())
    trial_id = tune.get_context().get_trial_id()
    # Divergence and running out of GPU memory (same batch size, same share) repeat, so Ray's retry (FailureConfig) of
    # such a trial fails at once with the same error. The record is kept in the search's folder, not in trial_dir:
    # Ray gives a retry that runs in a reused actor another trial_dir than the first attempt's.
    records = Path(setup.experiment_dir) / trial_dirname(trial_id)
    repeating = {NonFiniteLossError: records / DIVERGED_FILE, GpuOutOfMemoryError: records / OUT_OF_MEMORY_FILE}
    for error_type, record in repeating.items():
        if record.is_file():
            raise error_type(record.read_text())
    setup.share.apply()
    resume_state = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            resume_state = load_checkpoint(Path(directory))
    callbacks: list[TrainingCallback] = []
    if setup.tracking is not None:
        live = TrialRuns(setup.tracking).open(trial_id, experiment)
        if live is not None:
            callbacks.append(TrialRunCallback(live))
    where = placement()
    callbacks.append(TuneReporter(setup.epochs, where))
    try:
        result = run_experiment(experiment, callbacks=callbacks, resume_state=resume_state,
                                artifact_dir=trial_dir / ARTIFACT_DIR)
    except (NonFiniteLossError, GpuOutOfMemoryError) as error:
        records.mkdir(parents=True, exist_ok=True)
        repeating[type(error)].write_text(str(error))
        raise
    final = {**result.final_metrics(), "artifact_dir": str(result.artifact_dir),
             "test_windows": result.test_windows, "test_windows_total": result.test_windows_total}
    tune.report({**result.history[-1], SEARCH_METRIC: result.best_val_loss, **final, **where})


def placement() -> dict[str, str]:
    """Where this worker trains: the ids of the GPUs Ray assigned it, comma-separated (one for every trial or fused
    group, as a GPU share of 1/n never spans two GPUs), and the UUID of the CUDA device its tensors go to, which
    tells physical GPUs apart whatever ids each worker's CUDA_VISIBLE_DEVICES renumbers; both "" on a CPU."""
    device = ""
    if torch.cuda.is_available():
        device = str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid)
    return {GPU_IDS_KEY: ",".join(str(gpu) for gpu in ray.get_gpu_ids()), CUDA_DEVICE_KEY: device}


def trial_dirname(trial_id: str) -> str:
    """The folder of Tune trial `trial_id` in the search's folder (the runner's trial_dirname_creator)."""
    return f"trial_{trial_id}"


def load_checkpoint(directory: Path) -> dict[str, Any]:
    """The engine state a trial checkpoint holds; weights_only, so a crafted pickle in it cannot run code."""
    return torch.load(directory / CHECKPOINT_FILE, weights_only=True)


class TuneReporter(TrainingCallback):
    """One Tune report per epoch but the last (the search metric is val_loss_best, and where the trial trains), each
    with a checkpoint."""

    def __init__(self, epochs: int, where: dict[str, str]) -> None:
        self.epochs = epochs
        self.where = where

    def on_epoch(self, report: EpochReport) -> None:
        if report.epoch >= self.epochs:
            return
        with tempfile.TemporaryDirectory() as directory:
            torch.save(report.state(), Path(directory) / CHECKPOINT_FILE)
            tune.report({**epoch_row(report), **self.where},
                        checkpoint=tune.Checkpoint.from_directory(directory))


def epoch_row(report: EpochReport) -> dict[str, float]:
    """What each epoch reports: the search metric (best so far), this epoch's losses, learning rate and speed."""
    return {**report.row(), SEARCH_METRIC: report.best_val_loss}
