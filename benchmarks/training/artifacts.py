"""A run's artifacts: config.yaml, the restored best weights as safetensors, and its plots."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors.torch import save_model
from torch import nn

from benchmarks.data.protocol import ForecastData
from benchmarks.experiment import Experiment
from benchmarks.training.evaluation import target_channels
from benchmarks.training.plots import plot_expert_usage, plot_forecast

FORECAST_WINDOWS = 3
WEIGHTS_FILE = Path("model") / "weights.safetensors"   # a run's restored best weights, in its artifact folder


def run_config(experiment: Experiment) -> dict[str, Any]:
    """The content of config.yaml: model, dataset, seed, the model config, training and data settings."""
    return {"model": experiment.model, "dataset": experiment.dataset, "seed": experiment.seed,
            "model_config": experiment.model_config_dict(),
            "train": {key.partition(".")[2]: value for key, value in experiment.settings().items()
                      if key.startswith("train.")},
            "data": {key.partition(".")[2]: value for key, value in experiment.data_settings().items()}}


def write_artifacts(directory: Path, experiment: Experiment, model: nn.Module, data: ForecastData,
                    evaluated_windows: int, routing: dict[str, np.ndarray] | None) -> None:
    """config.yaml, model/weights.safetensors, plots/forecast.png (windows among the evaluated ones) and, for a
    model that reports routing, plots/experts.png."""
    (directory / WEIGHTS_FILE).parent.mkdir(parents=True, exist_ok=True)
    (directory / "plots").mkdir(parents=True, exist_ok=True)
    config = run_config(experiment)
    (directory / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    save_model(model, str(directory / WEIGHTS_FILE),
               metadata={"model": experiment.model, "model_config": json.dumps(config["model_config"])})

    target = target_channels(experiment.protocol.features)
    windows = torch.linspace(0, evaluated_windows - 1, FORECAST_WINDOWS).round().long().unique()
    batch = data.test.batch(windows)
    model.eval()
    with torch.no_grad():
        forecast, _ = model(batch.x, batch.x_mark)  # (W, pred_len, C_in)
    names = list(data.columns)[target]
    channels = list(range(len(names)))
    if len(channels) > 3:
        channels = sorted({0, len(channels) // 2, len(channels) - 1})
    plot_forecast(
        history=batch.x[..., target].float().cpu().numpy()[..., channels],
        truth=batch.y[..., target].float().cpu().numpy()[..., channels],
        forecast=forecast[..., target].float().cpu().numpy()[..., channels],
        channel_names=[names[index] for index in channels],
        window_indices=windows.tolist(),
        title=f"{experiment.model} on {experiment.dataset} (pred_len {experiment.pred_len}, normalised scale)",
        path=directory / "plots" / "forecast.png",
    )
    if routing is not None:
        plot_expert_usage(routing["expert_share"], routing["first_choice_share"],
                          float(routing["dropped_token_rate"]),
                          title=f"{experiment.model} on {experiment.dataset}: routing on the test set",
                          path=directory / "plots" / "experts.png")
