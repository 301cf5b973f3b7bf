"""The best trial's saved weights tested on every test window, for a search whose trials tested on fewer
(`--limit-eval-batches`, the CPU default): what the search reports as its best test score is then a full test.
"""
from __future__ import annotations

from pathlib import Path

import ray
from safetensors.torch import load_model

from benchmarks.data.protocol import load_forecast_data
from benchmarks.experiment import Experiment
from benchmarks.training.artifacts import WEIGHTS_FILE
from benchmarks.training.engine import resolve_device
from benchmarks.training.evaluation import Score, evaluate
from benchmarks.worker_share import WorkerShare


def evaluate_saved_weights(experiment: Experiment, artifact_dir: str, share: WorkerShare) -> Score:
    """Test the weights in `artifact_dir` on every test window of `experiment`'s data, in a Ray worker with `share`
    (with the seed the run's own test used)."""
    task = ray.remote(num_cpus=share.cpus, num_gpus=share.gpus)(_evaluate)
    return ray.get(task.remote(experiment, artifact_dir, share))


def _evaluate(experiment: Experiment, artifact_dir: str, share: WorkerShare) -> Score:
    share.apply()
    device = resolve_device(experiment.device)
    data = load_forecast_data(experiment.data, experiment.protocol, device=device)
    model = experiment.build_model()
    load_model(model, str(Path(artifact_dir) / WEIGHTS_FILE))
    model.to(device)
    return evaluate(model, data.test, features=experiment.protocol.features, batch_size=experiment.train.batch_size,
                    bf16=experiment.train.bf16, seed=experiment.seed)
