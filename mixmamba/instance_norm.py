"""Instance normalisation of each input series over its lookback window, and its inverse for the forecast.

The parameter-free "Normalization from Non-stationary Transformer" of the official MixMamba and TSLib's PatchTST and
iTransformer (their use_norm). It lives here, not in baselines/, because mixmamba/ imports nothing but torch.
"""
from __future__ import annotations

import torch

EPSILON = 1e-5


def normalize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centre and scale every (sample, channel) series over time; returns (normalised x, mean, std).

    x: (B, L, C); mean and std: (B, 1, C). The mean is detached and the std is not, as the reference code.
    """
    mean = x.mean(dim=1, keepdim=True).detach()
    centred = x - mean
    std = torch.sqrt(torch.var(centred, dim=1, keepdim=True, unbiased=False) + EPSILON)
    return centred / std, mean, std


def denormalize(y: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Map a forecast y (B, H, C) made in normalised units back to the input's units."""
    return y * std + mean
