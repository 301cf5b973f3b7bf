"""forecast_loss: MAE and MSE over every element, and errors for unknown kinds and shape mismatches."""
from __future__ import annotations

import pytest
import torch

from mixmamba import forecast_loss


def test_mae_and_mse_values():
    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    target = torch.tensor([[0.0, 2.0], [5.0, 4.0]])
    assert forecast_loss(pred, target).item() == pytest.approx(0.75)
    assert forecast_loss(pred, target, kind="mse").item() == pytest.approx(1.25)
    assert forecast_loss(pred, target).dim() == 0


def test_bad_kind_and_shapes_raise():
    with pytest.raises(ValueError, match="mae, mse"):
        forecast_loss(torch.zeros(2), torch.zeros(2), kind="huber")
    with pytest.raises(ValueError, match="one shape"):
        forecast_loss(torch.zeros(2, 3), torch.zeros(3, 2))
