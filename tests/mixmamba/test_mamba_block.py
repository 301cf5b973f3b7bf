"""The single Mamba-1 block: mamba_ssm's parameter names, shapes and init, and causality along the sequence."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mixmamba.mamba import Mamba


def test_parameters_have_mamba_ssm_names_and_shapes():
    d_model, d_state, d_conv, expand = 40, 8, 4, 2
    d_inner, dt_rank = expand * d_model, math.ceil(d_model / 16)
    block = Mamba(d_model, d_state, d_conv, expand)
    shapes = {name: tuple(p.shape) for name, p in block.named_parameters()}
    assert shapes == {
        "in_proj.weight": (2 * d_inner, d_model),
        "conv1d.weight": (d_inner, 1, d_conv),
        "conv1d.bias": (d_inner,),
        "x_proj.weight": (dt_rank + 2 * d_state, d_inner),
        "dt_proj.weight": (d_inner, dt_rank),
        "dt_proj.bias": (d_inner,),
        "A_log": (d_inner, d_state),
        "D": (d_inner,),
        "out_proj.weight": (d_model, d_inner),
    }


def test_init_is_s4d_real_with_dt_in_range():
    torch.manual_seed(0)
    block = Mamba(32, d_state=16)
    expected_A = torch.arange(1, 17, dtype=torch.float32).repeat(64, 1)
    torch.testing.assert_close(torch.exp(block.A_log), expected_A)
    assert torch.equal(block.D, torch.ones(64))
    dt = F.softplus(block.dt_proj.bias)
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    bound = block.dt_rank**-0.5
    assert block.dt_proj.weight.abs().max() <= bound


@pytest.mark.parametrize("t", [0, 5, 11])
def test_changing_token_t_never_changes_earlier_outputs(t):
    torch.manual_seed(1)
    block = Mamba(16, d_state=8).double()
    x = torch.randn(2, 12, 16, dtype=torch.float64)
    changed = x.clone()
    changed[:, t] += torch.randn(2, 16, dtype=torch.float64)
    out, out_changed = block(x), block(changed)
    torch.testing.assert_close(out[:, :t], out_changed[:, :t], rtol=0, atol=1e-13)
    assert not torch.allclose(out[:, t], out_changed[:, t])


def test_output_keeps_shape_and_dtype():
    block = Mamba(16, d_state=8)
    x = torch.randn(3, 7, 16)
    out = block(x)
    assert out.shape == x.shape and out.dtype == torch.float32
