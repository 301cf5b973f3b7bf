"""iTransformer against Time-Series-Library: parameter counts from TSLib's module shapes, variate tokens, checks."""
from __future__ import annotations

import pytest
import torch

from baselines import ITransformer, ITransformerConfig


def count(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def tslib_itransformer(seq_len: int, pred_len: int, d_model: int, e_layers: int, d_ff: int) -> int:
    """TSLib models/iTransformer.py: DataEmbedding_inverted, e_layers EncoderLayers, LayerNorm, projection."""
    embedding = seq_len * d_model + d_model  # DataEmbedding_inverted.value_embedding: Linear(seq_len, d_model)
    attention = 4 * (d_model * d_model + d_model)  # AttentionLayer q/k/v/out projections
    feed_forward = (d_model * d_ff + d_ff) + (d_ff * d_model + d_model)  # conv1, conv2 with kernel 1
    layer = attention + feed_forward + 2 * (2 * d_model)  # + norm1, norm2
    final_norm = 2 * d_model
    projection = d_model * pred_len + pred_len
    return embedding + e_layers * layer + final_norm + projection


@pytest.mark.parametrize("pred_len, expected", [(96, 4_833_888), (720, 5_154_000)])
def test_parameter_count_matches_tslib_at_the_weather_recipe(pred_len, expected):
    # TSLib Weather_script/iTransformer.sh: e_layers 3, d_model 512, d_ff 512, run.py n_heads 8
    model = ITransformer(ITransformerConfig(seq_len=96, pred_len=pred_len, enc_in=21, e_layers=3, d_ff=512))
    assert count(model) == tslib_itransformer(96, pred_len, d_model=512, e_layers=3, d_ff=512) == expected


def tiny(**settings) -> ITransformer:
    torch.manual_seed(0)
    return ITransformer(ITransformerConfig(32, 8, 3, d_model=16, n_heads=2, e_layers=1, d_ff=32, **settings)).eval()


def test_time_features_join_as_tokens_but_are_not_forecast():
    model = tiny()
    x = torch.randn(2, 32, 3)
    with torch.no_grad():
        without, _ = model(x)
        with_marks, _ = model(x, torch.randn(2, 32, 5))
    assert with_marks.shape == without.shape == (2, 8, 3)
    assert not torch.allclose(with_marks, without)


def test_variates_attend_to_each_other():
    model = tiny()
    x = torch.randn(2, 32, 3)
    changed = x.clone()
    changed[:, :, 0] = torch.randn(2, 32)
    with torch.no_grad():
        before, _ = model(x)
        after, _ = model(changed)
    assert not torch.allclose(after[:, :, 1:], before[:, :, 1:])


def test_variate_order_is_equivariant():
    # no positional embedding over variates: permuting the channels permutes the forecast
    model = tiny()
    x = torch.randn(2, 32, 3)
    order = torch.tensor([2, 0, 1])
    with torch.no_grad():
        base, _ = model(x)
        permuted, _ = model(x[:, :, order])
    torch.testing.assert_close(permuted, base[:, :, order], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"d_model": 30, "n_heads": 4}, "divisible by n_heads"),
        ({"d_ff": 0}, "d_ff"),
        ({"dropout": -0.1}, "dropout"),
        ({"activation": "tanh"}, "activation"),
    ],
)
def test_bad_settings_raise_value_errors_that_name_the_field(settings, message):
    with pytest.raises(ValueError, match=message):
        ITransformerConfig(seq_len=96, pred_len=96, enc_in=7, **settings)
