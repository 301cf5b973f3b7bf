"""PatchTST against Time-Series-Library: parameter counts from TSLib's module shapes, patching and config checks."""
from __future__ import annotations

import pytest
import torch

from baselines import PatchTST, PatchTSTConfig


def count(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def tslib_encoder_layer(d_model: int, d_ff: int) -> int:
    """TSLib EncoderLayer: AttentionLayer's 4 Linear(d_model, d_model), conv1/conv2 (kernel 1), norm1/norm2."""
    attention = 4 * (d_model * d_model + d_model)
    feed_forward = (d_model * d_ff + d_ff) + (d_ff * d_model + d_model)
    norms = 2 * (2 * d_model)
    return attention + feed_forward + norms


def tslib_patchtst(seq_len: int, pred_len: int, d_model: int, e_layers: int, d_ff: int) -> int:
    """TSLib models/PatchTST.py with its fixed patch_len 16, stride 8."""
    patch_len, stride = 16, 8
    head_nf = d_model * int((seq_len - patch_len) / stride + 2)
    embedding = patch_len * d_model  # PatchEmbedding.value_embedding: Linear(patch_len, d_model, bias=False)
    encoder = e_layers * tslib_encoder_layer(d_model, d_ff) + 2 * d_model  # + BatchNorm1d(d_model) weight, bias
    head = head_nf * pred_len + pred_len  # FlattenHead.linear
    return embedding + encoder + head


@pytest.mark.parametrize("pred_len, expected", [(96, 6_903_904), (720, 10_738_384)])
def test_parameter_count_matches_tslib_at_the_weather_recipe(pred_len, expected):
    # TSLib Weather_script/PatchTST.sh: e_layers 2, n_heads 4, run.py d_model 512, d_ff 2048
    model = PatchTST(PatchTSTConfig(seq_len=96, pred_len=pred_len, enc_in=21, e_layers=2, n_heads=4))
    assert count(model) == tslib_patchtst(96, pred_len, d_model=512, e_layers=2, d_ff=2048) == expected


def test_parameter_count_does_not_depend_on_channels():
    small = PatchTST(PatchTSTConfig(96, 96, 7, d_model=32, n_heads=4, e_layers=1, d_ff=64))
    large = PatchTST(PatchTSTConfig(96, 96, 321, d_model=32, n_heads=4, e_layers=1, d_ff=64))
    assert count(small) == count(large) == tslib_patchtst(96, 96, d_model=32, e_layers=1, d_ff=64)


@pytest.mark.parametrize("seq_len, patch_len, stride, expected", [(96, 16, 8, 12), (36, 16, 8, 4), (100, 24, 12, 8)])
def test_patch_count_follows_tslib(seq_len, patch_len, stride, expected):
    config = PatchTSTConfig(seq_len, 24, 3, patch_len=patch_len, stride=stride)
    assert config.patch_num == int((seq_len - patch_len) / stride + 2) == expected


def test_channels_are_forecast_independently():
    torch.manual_seed(0)
    model = PatchTST(PatchTSTConfig(32, 8, 3, d_model=16, n_heads=2, e_layers=1, d_ff=32)).eval()
    x = torch.randn(2, 32, 3)
    changed = x.clone()
    changed[:, :, 0] = torch.randn(2, 32)
    with torch.no_grad():
        before, _ = model(x)
        after, _ = model(changed)
    torch.testing.assert_close(after[:, :, 1:], before[:, :, 1:])
    assert not torch.allclose(after[:, :, 0], before[:, :, 0])


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"d_model": 30, "n_heads": 4}, "divisible by n_heads"),
        ({"patch_len": 200}, "patch_len"),
        ({"dropout": 1.0}, "dropout"),
        ({"activation": "swish"}, "activation"),
        ({"stride": 0}, "stride"),
        ({"e_layers": 0}, "e_layers"),
    ],
)
def test_bad_settings_raise_value_errors_that_name_the_field(settings, message):
    with pytest.raises(ValueError, match=message):
        PatchTSTConfig(seq_len=96, pred_len=96, enc_in=7, **settings)
