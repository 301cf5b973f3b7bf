"""The model contract every baseline keeps: shapes at all horizons, a zero aux loss, instance-norm equivariance,
enough capacity to overfit one fixed batch, and a frozen config."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from baselines import DLinear, DLinearConfig, ITransformer, ITransformerConfig, PatchTST, PatchTSTConfig

TINY = {
    "patchtst": lambda seq_len, pred_len, enc_in, **kw: PatchTST(
        PatchTSTConfig(seq_len, pred_len, enc_in, d_model=16, n_heads=2, e_layers=1, d_ff=32, **kw)
    ),
    "itransformer": lambda seq_len, pred_len, enc_in, **kw: ITransformer(
        ITransformerConfig(seq_len, pred_len, enc_in, d_model=16, n_heads=2, e_layers=1, d_ff=32, **kw)
    ),
    "dlinear": lambda seq_len, pred_len, enc_in, **kw: DLinear(DLinearConfig(seq_len, pred_len, enc_in, **kw)),
}


def sine_windows(batch: int, seq_len: int, pred_len: int, channels: int, seed: int = 0):
    """Lookback and horizon windows (B, L, C), (B, H, C) of sines with random period, phase, amplitude and level."""
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(seq_len + pred_len, dtype=torch.float32)[None, :, None]
    period = 8 + 16 * torch.rand(batch, 1, channels, generator=generator)
    phase = 2 * math.pi * torch.rand(batch, 1, channels, generator=generator)
    amplitude = 0.5 + torch.rand(batch, 1, channels, generator=generator)
    level = torch.randn(batch, 1, channels, generator=generator)
    series = level + amplitude * torch.sin(2 * math.pi * t / period + phase)
    return series[:, :seq_len], series[:, seq_len:]


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("pred_len", [96, 192, 336, 720])
def test_forecast_shape_and_zero_aux_loss_at_every_horizon(name, pred_len):
    model = TINY[name](96, pred_len, 5)
    forecast, aux_loss = model(torch.randn(3, 96, 5), torch.randn(3, 96, 4))
    assert forecast.shape == (3, pred_len, 5)
    assert aux_loss.shape == () and aux_loss.item() == 0.0
    assert torch.isfinite(forecast).all()


@pytest.mark.parametrize("name", sorted(TINY))
def test_x_mark_may_be_omitted(name):
    forecast, _ = TINY[name](48, 24, 3)(torch.randn(2, 48, 3))
    assert forecast.shape == (2, 24, 3)


@pytest.mark.parametrize("name", ["patchtst", "itransformer"])
def test_affine_change_of_input_units_carries_to_the_forecast(name):
    """With instance normalisation, forecast(a * x + b) == a * forecast(x) + b for a > 0 (eval mode)."""
    torch.manual_seed(0)
    model = TINY[name](64, 32, 4).double().eval()
    x = torch.randn(2, 64, 4, dtype=torch.float64)
    x_mark = torch.randn(2, 64, 4, dtype=torch.float64)
    with torch.no_grad():
        base, _ = model(x, x_mark)
        scaled, _ = model(7.5 * x - 3.0, x_mark)
    torch.testing.assert_close(scaled, 7.5 * base - 3.0, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["patchtst", "itransformer"])
def test_without_use_norm_the_forecast_is_not_rescaled(name):
    torch.manual_seed(0)
    model = TINY[name](64, 32, 4, use_norm=False).double().eval()
    x = torch.randn(2, 64, 4, dtype=torch.float64)
    with torch.no_grad():
        base, _ = model(x)
        scaled, _ = model(7.5 * x)
    assert not torch.allclose(scaled, 7.5 * base, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("name", sorted(TINY))
def test_a_fixed_batch_is_overfit(name):
    torch.manual_seed(0)
    model = TINY[name](32, 8, 3, **({} if name == "dlinear" else {"dropout": 0.0}))
    x, y = sine_windows(batch=4, seq_len=32, pred_len=8, channels=3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(200):
        optimizer.zero_grad()
        forecast, aux_loss = model(x)
        loss = torch.nn.functional.mse_loss(forecast, y) + aux_loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10, f"loss went {losses[0]:.4f} -> {losses[-1]:.4f}"


@pytest.mark.parametrize("name", sorted(TINY))
def test_config_is_frozen(name):
    config = TINY[name](32, 8, 3).config
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.pred_len = 16
    assert dataclasses.replace(config, pred_len=16).pred_len == 16
