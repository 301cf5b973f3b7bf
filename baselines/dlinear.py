"""DLinear (Zeng et al., AAAI 2023): split each series into trend and remainder, forecast each with one linear map.

Follows Time-Series-Library's models/DLinear.py: Autoformer's moving-average decomposition with edge replication,
linear maps over time shared by all channels (or one per channel with `individual`), weights starting at 1/seq_len.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class DLinearConfig:
    """DLinear settings; names and defaults follow TSLib's run.py (individual off, as its model is built)."""

    seq_len: int
    pred_len: int
    enc_in: int
    moving_avg: int = 25
    individual: bool = False

    def __post_init__(self) -> None:
        for name in ("seq_len", "pred_len", "enc_in", "moving_avg"):
            if getattr(self, name) < 1:
                raise ValueError(f"DLinearConfig.{name} must be a positive integer, got {getattr(self, name)}")
        if self.moving_avg % 2 == 0:
            # an even window shortens the trend by one step (TSLib pads (k - 1) // 2 on each side)
            raise ValueError(f"DLinearConfig.moving_avg must be odd, got {self.moving_avg}; use {self.moving_avg + 1}")


def moving_average(x: torch.Tensor, window: int) -> torch.Tensor:
    """Centred moving average over time of x (B, L, C), the ends padded by repeating the edge values."""
    pad = (window - 1) // 2
    padded = torch.cat([x[:, :1].expand(-1, pad, -1), x, x[:, -1:].expand(-1, pad, -1)], dim=1)  # (B, L + 2p, C)
    return F.avg_pool1d(padded.permute(0, 2, 1), kernel_size=window, stride=1).permute(0, 2, 1)  # (B, L, C)


class ChannelLinear(nn.Module):
    """A linear map from seq_len to pred_len steps: one for all channels, or one per channel."""

    def __init__(self, seq_len: int, pred_len: int, groups: int) -> None:
        super().__init__()
        # weight starts as TSLib's 1/seq_len average; bias keeps nn.Linear's default uniform init
        self.weight = nn.Parameter(torch.full((groups, pred_len, seq_len), 1.0 / seq_len))  # (G, H, L)
        bound = 1.0 / math.sqrt(seq_len)
        self.bias = nn.Parameter(torch.empty(groups, pred_len).uniform_(-bound, bound))  # (G, H)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x (B, C, L) -> (B, C, H)
        if self.weight.shape[0] == 1:
            return F.linear(x, self.weight[0], self.bias[0])
        return torch.einsum("bcl,chl->bch", x, self.weight) + self.bias


class DLinear(nn.Module):
    """Forecast = linear(seasonal part) + linear(trend part): (B, seq_len, enc_in) -> (B, pred_len, enc_in)."""

    def __init__(self, config: DLinearConfig) -> None:
        super().__init__()
        self.config = config
        groups = config.enc_in if config.individual else 1
        self.linear_seasonal = ChannelLinear(config.seq_len, config.pred_len, groups)
        self.linear_trend = ChannelLinear(config.seq_len, config.pred_len, groups)

    def forward(self, x: torch.Tensor, x_mark: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, seq_len, enc_in); x_mark is accepted for the common interface and unused."""
        trend = moving_average(x, self.config.moving_avg)  # (B, L, C)
        seasonal = x - trend  # (B, L, C)
        forecast = self.linear_seasonal(seasonal.permute(0, 2, 1)) + self.linear_trend(trend.permute(0, 2, 1))
        forecast = forecast.permute(0, 2, 1)  # (B, pred_len, C)
        return forecast, forecast.new_zeros(())
