"""DLinear against Time-Series-Library: parameter counts, the moving-average decomposition, its initialisation."""
from __future__ import annotations

import pytest
import torch

from baselines import DLinear, DLinearConfig
from baselines.dlinear import moving_average


def count(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


@pytest.mark.parametrize("pred_len, expected", [(96, 18_624), (720, 139_680)])
def test_parameter_count_matches_tslib_at_weather(pred_len, expected):
    # TSLib models/DLinear.py, individual=False: Linear_Seasonal and Linear_Trend, each Linear(seq_len, pred_len)
    model = DLinear(DLinearConfig(seq_len=96, pred_len=pred_len, enc_in=21))
    assert count(model) == 2 * (96 * pred_len + pred_len) == expected


def test_individual_has_one_pair_of_maps_per_channel():
    model = DLinear(DLinearConfig(seq_len=96, pred_len=96, enc_in=21, individual=True))
    assert count(model) == 21 * 2 * (96 * 96 + 96) == 391_104


def test_moving_average_replicates_the_edges():
    x = torch.randn(2, 20, 3)
    window = 5
    padded = torch.cat([x[:, :1].repeat(1, 2, 1), x, x[:, -1:].repeat(1, 2, 1)], dim=1)
    expected = torch.stack([padded[:, t : t + window].mean(dim=1) for t in range(20)], dim=1)
    torch.testing.assert_close(moving_average(x, window), expected)


def test_weights_start_as_the_lookback_mean():
    model = DLinear(DLinearConfig(seq_len=48, pred_len=12, enc_in=2))
    with torch.no_grad():
        model.linear_seasonal.bias.zero_()
        model.linear_trend.bias.zero_()
        x = torch.randn(3, 48, 2)
        forecast, _ = model(x)
    # seasonal + trend == x, and each map starts as the average over the lookback
    torch.testing.assert_close(forecast, x.mean(dim=1, keepdim=True).expand(-1, 12, -1), rtol=1e-5, atol=1e-5)


def test_individual_maps_are_per_channel():
    model = DLinear(DLinearConfig(seq_len=16, pred_len=4, enc_in=3, individual=True))
    x = torch.randn(2, 16, 3)
    with torch.no_grad():
        before, _ = model(x)
        model.linear_trend.weight[0].mul_(2.0)
        after, _ = model(x)
    torch.testing.assert_close(after[:, :, 1:], before[:, :, 1:])
    assert not torch.allclose(after[:, :, 0], before[:, :, 0])


@pytest.mark.parametrize("settings, message", [({"moving_avg": 24}, "odd"), ({"moving_avg": 0}, "moving_avg")])
def test_bad_settings_raise_value_errors_that_name_the_field(settings, message):
    with pytest.raises(ValueError, match=message):
        DLinearConfig(seq_len=96, pred_len=96, enc_in=7, **settings)
