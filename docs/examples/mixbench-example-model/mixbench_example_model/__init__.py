"""TinyMLP: a channel-independent MLP forecaster (instance-normalised lookback -> hidden layer -> horizon), packaged as
a MixBench model plugin: a config dataclass, an nn.Module with MixBench's forward contract, a recipe and a space.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from benchmarks.models.plugins import ModelPlugin


@dataclass(frozen=True)
class TinyMLPConfig:
    """The first three fields come from the data protocol; the rest are the model's settings (`model.<field>`)."""

    seq_len: int
    pred_len: int
    enc_in: int
    hidden: int = 64
    dropout: float = 0.0

    def __post_init__(self) -> None:
        # the one check of every value: MixBench turns ValueError into a one-line error naming the setting
        if self.hidden < 1:
            raise ValueError(f"hidden must be at least 1, got {self.hidden}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")


class TinyMLP(nn.Module):
    """forward(x, x_mark) -> (forecast, aux_loss): x (B, seq_len, enc_in) -> forecast (B, pred_len, enc_in)."""

    def __init__(self, config: TinyMLPConfig) -> None:
        super().__init__()
        self.config = config
        self.net = nn.Sequential(nn.Linear(config.seq_len, config.hidden), nn.GELU(), nn.Dropout(config.dropout),
                                 nn.Linear(config.hidden, config.pred_len))

    def forward(self, x: torch.Tensor, x_mark: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        mean = x.mean(dim=1, keepdim=True)
        std = x.std(dim=1, keepdim=True, unbiased=False) + 1e-5
        series = ((x - mean) / std).transpose(1, 2)            # (B, enc_in, seq_len): each channel on its own
        forecast = self.net(series).transpose(1, 2) * std + mean
        return forecast, x.new_zeros(())                        # no auxiliary loss


plugin = ModelPlugin(
    name="tinymlp",
    config_class=TinyMLPConfig,
    model_class=TinyMLP,
    label="TinyMLP",
    # same layout as a model's section of benchmarks/models/recipes.yaml; unset keys keep TSLib's run.py defaults
    recipe={"defaults": {"model": {"hidden": 64}, "train": {"learning_rate": 0.001, "epochs": 10}}},
    space=Path(__file__).with_name("space.yaml"),
)
