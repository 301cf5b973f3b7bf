"""The MixMamba forecaster: interface, the official parameter count, instance norm, routing stats, training."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mixmamba import MixMamba, MixMambaConfig, forecast_loss


def official_etth1_parameter_count() -> int:
    """Parameters the official ETTh1 script's model (seq 96, pred 192, d_model 64, enc_in 7, 2 experts, top-2)
    uses in its forward, from the shapes in models/mixmamba.py and layers/st_moe.py. Left out: `projection`
    (Linear(head_nf, c_out), built, never called) and TopNGating's `mamba` (built, never called)."""
    d_model, patch_len, seq_len, stride, pred_len, experts = 64, 16, 96, 8, 192, 2
    d_state, d_conv, d_inner, dt_rank = 8, 4, 128, 4  # Expert(dim) defaults: d_state=8, expand=2
    value_embedding = patch_len * d_model  # Linear(patch_len, d_model, bias=False)
    gate = d_model * experts  # to_gates: Linear(dim, num_gates, bias=False)
    mamba = (
        d_model * 2 * d_inner  # in_proj
        + d_inner * d_conv + d_inner  # conv1d (depthwise) weight + bias
        + d_inner * (dt_rank + 2 * d_state)  # x_proj
        + dt_rank * d_inner + d_inner  # dt_proj weight + bias
        + d_inner * d_state  # A_log
        + d_inner  # D
        + d_inner * d_model  # out_proj
    )
    head_nf = d_model * int((seq_len - patch_len) / stride + 2)
    head = head_nf * pred_len + pred_len
    return value_embedding + gate + experts * mamba + head


def test_parameter_count_equals_what_the_official_etth1_model_uses():
    model = MixMamba(MixMambaConfig(seq_len=96, pred_len=192, enc_in=7, d_model=64, num_experts=2, top_k=2))
    assert sum(p.numel() for p in model.parameters()) == official_etth1_parameter_count() == 207936


def test_forward_shapes_aux_and_routing_stats():
    model = MixMamba(MixMambaConfig(seq_len=32, pred_len=8, enc_in=3, d_model=16, num_experts=4, top_k=2))
    x = torch.randn(2, 32, 3)
    forecast, aux = model(x, torch.randn(2, 32, 4))
    assert forecast.shape == (2, 8, 3) and aux.dim() == 0 and aux.item() > 0
    stats = model.last_routing
    assert stats.expert_share.shape == (4,)
    torch.testing.assert_close(stats.expert_share.sum(), torch.tensor(1.0))
    model.eval()
    _, aux = model(x)
    assert aux.item() == 0.0


def seeded_forecast(model: MixMamba, *inputs: torch.Tensor) -> torch.Tensor:
    """The forecast with the router's coin flips (drawn in eval mode too) from a fixed seed, so passes compare."""
    model.moe.router.generator = torch.Generator().manual_seed(0)
    return model(*inputs)[0]


def test_routing_statistics_report_the_last_forward():
    model = MixMamba(MixMambaConfig(seq_len=32, pred_len=8, enc_in=3, d_model=16, num_experts=4, top_k=2))
    assert model.routing_statistics() is None
    model(torch.randn(2, 32, 3))
    statistics = model.routing_statistics()
    assert set(statistics) == {"expert_share", "first_choice_share", "dropped_token_rate"}
    assert statistics["expert_share"].shape == statistics["first_choice_share"].shape == (4,)
    assert statistics["dropped_token_rate"].shape == ()
    assert statistics["expert_share"] is model.last_routing.expert_share
    assert not any(value.requires_grad for value in statistics.values())


def test_x_mark_is_ignored():
    model = MixMamba(MixMambaConfig(seq_len=32, pred_len=8, enc_in=3, d_model=16)).eval()
    x = torch.randn(2, 32, 3)
    assert torch.equal(seeded_forecast(model, x), seeded_forecast(model, x, torch.randn(2, 32, 4)))


def test_instance_norm_makes_the_forecast_follow_level_shifts():
    model = MixMamba(MixMambaConfig(seq_len=32, pred_len=8, enc_in=3, d_model=16)).double().eval()
    x = torch.randn(2, 32, 3, dtype=torch.float64)
    shift = torch.tensor([10.0, -3.0, 0.5], dtype=torch.float64)
    torch.testing.assert_close(seeded_forecast(model, x + shift), seeded_forecast(model, x) + shift, rtol=1e-9,
                               atol=1e-9)
    raw = MixMamba(MixMambaConfig(seq_len=32, pred_len=8, enc_in=3, d_model=16, use_norm=False)).double().eval()
    assert not torch.allclose(raw(x + shift)[0], raw(x)[0] + shift)


def test_channels_are_independent():
    model = MixMamba(MixMambaConfig(seq_len=32, pred_len=8, enc_in=3, d_model=16)).double().eval()
    x = torch.randn(1, 32, 3, dtype=torch.float64)
    changed = x.clone()
    changed[..., 1] = torch.randn(32, dtype=torch.float64)
    out, out_changed = seeded_forecast(model, x), seeded_forecast(model, changed)
    assert torch.equal(out[..., [0, 2]], out_changed[..., [0, 2]])
    assert not torch.allclose(out[..., 1], out_changed[..., 1])


def test_wrong_input_shape_says_what_to_do():
    model = MixMamba(MixMambaConfig(seq_len=32, pred_len=8, enc_in=3, d_model=16))
    with pytest.raises(ValueError, match=r"\(batch, 32, 3\)"):
        model(torch.randn(2, 32, 4))


def test_paper_variant_adds_norms_and_layers():
    model = MixMamba(MixMambaConfig(seq_len=32, pred_len=8, enc_in=2, d_model=16, variant="paper", n_layers=2))
    official = MixMamba(MixMambaConfig(seq_len=32, pred_len=8, enc_in=2, d_model=16))
    assert len(model.moe.experts.layers) == 2 and model.moe.experts.layers[0].norm_weight.shape == (2, 16)
    assert official.moe.experts.layers[0].norm_weight is None
    assert model.moe.experts.layers[0].d_state == 16 and official.moe.experts.layers[0].d_state == 8
    forecast, aux = model(torch.randn(2, 32, 2))
    assert forecast.shape == (2, 8, 2) and torch.isfinite(aux)


def test_repr_names_the_scan_backend():
    model = MixMamba(MixMambaConfig(seq_len=32, pred_len=8, enc_in=2, d_model=16))
    assert "scan_backend=auto -> reference" in repr(model)


def test_injected_router_generator_makes_training_forwards_repeatable():
    model = MixMamba(MixMambaConfig(seq_len=32, pred_len=8, enc_in=2, d_model=16, dropout=0.0, num_experts=4))
    x = torch.randn(3, 32, 2)
    model.moe.router.generator = torch.Generator().manual_seed(11)
    first = model(x)[0]
    model.moe.router.generator = torch.Generator().manual_seed(11)
    assert torch.equal(model(x)[0], first)


def etth1_windows(data_dir, seq_len, pred_len, count):
    frame = pd.read_csv(data_dir / "ETT-small" / "ETTh1.csv", nrows=2000)
    values = frame.drop(columns=["date"]).to_numpy(dtype=np.float32)
    values = (values - values.mean(0)) / values.std(0)
    starts = np.linspace(0, len(values) - seq_len - pred_len, count).astype(int)
    x = np.stack([values[s : s + seq_len] for s in starts])
    y = np.stack([values[s + seq_len : s + seq_len + pred_len] for s in starts])
    return torch.from_numpy(x), torch.from_numpy(y)


def test_model_trains_on_etth1_and_the_loss_falls(shared_data_dir):
    torch.manual_seed(0)
    x, y = etth1_windows(shared_data_dir, seq_len=96, pred_len=24, count=16)
    model = MixMamba(MixMambaConfig(seq_len=96, pred_len=24, enc_in=7, d_model=16, dropout=0.0))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    def eval_loss():
        model.eval()
        with torch.no_grad():
            loss = forecast_loss(model(x)[0], y).item()
        model.train()
        return loss

    before = eval_loss()
    for _ in range(10):
        forecast, aux = model(x)
        loss = forecast_loss(forecast, y) + aux
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = eval_loss()
    assert after < 0.85 * before  # about 0.69 -> 0.52 with this seed
    assert all(p.grad is not None for p in model.parameters())
