"""Batched experts equal a loop of single Mamba experts; per-expert state dicts; official init; causality."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mixmamba.experts import MambaExperts
from mixmamba.mamba import Mamba

MAMBA_KEYS = [
    "in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight", "dt_proj.bias",
    "A_log", "D", "out_proj.weight",
]


def single_blocks(state, num_experts, d_model, d_state, prefix="experts.{e}."):
    """One plain Mamba block per expert loaded from a per-expert state dict."""
    blocks = []
    for e in range(num_experts):
        block = Mamba(d_model, d_state).double()
        block.load_state_dict({key: state[prefix.format(e=e) + key] for key in MAMBA_KEYS})
        blocks.append(block)
    return blocks


def test_official_batched_experts_equal_a_loop_of_single_experts():
    torch.manual_seed(0)
    experts = MambaExperts(3, d_model=16, d_state=8, official_init=True).double()
    x = torch.randn(3, 4, 9, 16, dtype=torch.float64)  # (E, b, L, d)
    blocks = single_blocks(experts.per_expert_state_dict(), 3, 16, 8)
    looped = torch.stack([block(x[e]) for e, block in enumerate(blocks)])
    batched = experts(x)
    assert (batched - looped).abs().max() <= 1e-6
    torch.testing.assert_close(batched, looped, rtol=1e-12, atol=1e-12)


def test_paper_batched_experts_equal_a_loop_of_prenorm_residual_layers():
    torch.manual_seed(1)
    experts = MambaExperts(2, d_model=16, d_state=16, n_layers=2, prenorm_residual=True).double()
    with torch.no_grad():
        for layer in experts.layers:
            layer.norm_weight.uniform_(0.5, 1.5)
    state = experts.per_expert_state_dict()
    x = torch.randn(2, 3, 8, 16, dtype=torch.float64)
    outputs = []
    for e in range(2):
        h = x[e]
        for layer in range(2):
            prefix = f"experts.{{e}}.layers.{layer}.mixer."
            block = single_blocks(state, 2, 16, 16, prefix)[e]
            weight = state[f"experts.{e}.layers.{layer}.norm.weight"]
            h = h + block(F.normalize(h, dim=-1) * 16**0.5 * weight)
        outputs.append(h)
    batched = experts(x)
    assert (batched - torch.stack(outputs)).abs().max() <= 1e-6


def test_per_expert_state_dict_round_trip():
    torch.manual_seed(2)
    source = MambaExperts(4, d_model=16, d_state=8, official_init=True)
    target = MambaExperts(4, d_model=16, d_state=8, official_init=True)
    state = source.per_expert_state_dict()
    assert sorted(state) == sorted(f"experts.{e}.{key}" for e in range(4) for key in MAMBA_KEYS)
    assert state["experts.3.in_proj.weight"].shape == (64, 16)
    assert state["experts.0.conv1d.weight"].shape == (32, 1, 4)
    target.load_per_expert_state_dict(state)
    for name, tensor in source.state_dict().items():
        assert torch.equal(tensor, target.state_dict()[name]), name
    x = torch.randn(4, 2, 5, 16)
    assert torch.equal(source(x), target(x))
    assert torch.equal(state["experts.2.A_log"], source.layers[0].A_log[2])


def test_paper_keys_follow_mamba_ssm_block_names():
    experts = MambaExperts(2, d_model=16, d_state=8, n_layers=2, prenorm_residual=True)
    state = experts.per_expert_state_dict()
    assert "experts.1.layers.1.norm.weight" in state
    assert "experts.0.layers.0.mixer.dt_proj.bias" in state
    assert len(state) == 2 * 2 * (len(MAMBA_KEYS) + 1)


def test_loading_a_mismatched_state_dict_says_what_to_fix():
    experts = MambaExperts(2, d_model=16, d_state=8)
    state = experts.per_expert_state_dict()
    del state["experts.1.D"]
    with pytest.raises(ValueError, match="missing"):
        experts.load_per_expert_state_dict(state)
    wider = MambaExperts(2, d_model=16, d_state=16).per_expert_state_dict()
    with pytest.raises(ValueError, match="d_state"):
        experts.load_per_expert_state_dict(wider)


def test_official_init_draws_linear_and_conv_parameters_from_the_official_bounds():
    torch.manual_seed(3)
    layer = MambaExperts(4, d_model=64, d_state=8, official_init=True).layers[0]
    d_inner, dt_rank = 128, 4
    bounds = {
        "in_proj_weight": (2 * d_inner) ** -0.5,
        "conv1d_weight": d_inner**-0.5,
        "conv1d_bias": d_inner**-0.5,
        "x_proj_weight": (dt_rank + 16) ** -0.5,
        "dt_proj_weight": d_inner**-0.5,
        "dt_proj_bias": d_inner**-0.5,
        "out_proj_weight": 64**-0.5,
    }
    for name, bound in bounds.items():
        values = getattr(layer, name).detach()
        assert values.abs().max() <= bound, name
        # uniform(-b, b) fills the range: the extremes come close to the bound
        assert values.abs().max() >= 0.9 * bound, name
    # A_log and D are not Linear / Conv1d parameters: the official init_ leaves mamba_ssm's S4D init alone
    torch.testing.assert_close(torch.exp(layer.A_log[1]), torch.arange(1, 9.0).repeat(d_inner, 1))
    assert torch.equal(layer.D, torch.ones(4, d_inner))


def test_mamba_ssm_init_keeps_dt_between_dt_min_and_dt_max():
    layer = MambaExperts(3, d_model=32, d_state=8).layers[0]
    dt = F.softplus(layer.dt_proj_bias.detach())
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)


@pytest.mark.parametrize("prenorm_residual", [False, True])
def test_batched_experts_are_causal_and_independent(prenorm_residual):
    torch.manual_seed(4)
    experts = MambaExperts(3, d_model=16, d_state=8, prenorm_residual=prenorm_residual).double()
    x = torch.randn(3, 2, 10, 16, dtype=torch.float64)
    changed = x.clone()
    changed[1, :, 6] += 1.0  # expert 1, token 6
    out, out_changed = experts(x), experts(changed)
    torch.testing.assert_close(out[1, :, :6], out_changed[1, :, :6], rtol=0, atol=1e-13)
    assert not torch.allclose(out[1, :, 6], out_changed[1, :, 6])
    assert torch.equal(out[[0, 2]], out_changed[[0, 2]])


def test_repr_shows_the_scan_backend():
    assert "scan_backend=auto -> reference" in repr(MambaExperts(2, d_model=16, d_state=8))
