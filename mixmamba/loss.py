"""forecast_loss: the point-forecast loss (MAE as the official MixMamba trains, or MSE); the caller adds aux."""
from __future__ import annotations

import torch
import torch.nn.functional as F

LOSS_KINDS = ("mae", "mse")


def forecast_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "mae") -> torch.Tensor:
    """Mean absolute ("mae") or squared ("mse") error over every element; returns a 0-dim tensor.

    The default is MAE, not the training engine's MSE (TSLib's default for every model), because the official
    MixMamba trains and validates with nn.L1Loss whatever its --loss says; the mixmamba recipe sets train.loss mae.
    """
    if kind not in LOSS_KINDS:
        raise ValueError(f"forecast_loss kind={kind!r}; use one of {', '.join(LOSS_KINDS)}")
    if pred.shape != target.shape:
        raise ValueError(
            f"forecast_loss got pred {tuple(pred.shape)} and target {tuple(target.shape)}; pass tensors of one shape"
        )
    return F.l1_loss(pred, target) if kind == "mae" else F.mse_loss(pred, target)
