"""MixMambaConfig: the official variant's fixed expert sizes, the paper defaults, errors that say what to fix, and
its being frozen."""
from __future__ import annotations

import dataclasses

import pytest

from mixmamba import MixMambaConfig


def test_official_variant_runs_what_the_official_code_runs():
    config = MixMambaConfig(seq_len=96, pred_len=192, enc_in=7)
    assert (config.d_state, config.d_conv, config.expand, config.n_layers) == (8, 4, 2, 1)
    assert config.patch_num == 12  # (96 + 8 - 16) // 8 + 1, the official head_nf / d_model
    assert MixMambaConfig(seq_len=96, pred_len=96, enc_in=7, d_state=8, expand=2).d_state == 8


def test_paper_variant_honours_the_expert_sizes():
    config = MixMambaConfig(seq_len=96, pred_len=96, enc_in=7, variant="paper")
    assert (config.d_state, config.d_conv, config.expand) == (16, 4, 2)
    config = MixMambaConfig(seq_len=96, pred_len=96, enc_in=7, variant="paper", d_state=32, expand=3, n_layers=2)
    assert (config.d_state, config.expand, config.n_layers) == (32, 3, 2)


@pytest.mark.parametrize(
    "overrides,fix",
    [
        ({"d_state": 16}, r"set d_state=8 \(or leave it unset\) or use variant='paper'"),
        ({"expand": 3}, "set expand=2"),
        ({"d_conv": 3}, "set d_conv=4"),
        ({"n_layers": 2}, "set n_layers=1 or use variant='paper'"),
        ({"variant": "mamba2"}, "use one of official, paper"),
        ({"top_k": 1}, "2 <= top_k <= num_experts"),
        ({"top_k": 3, "num_experts": 2}, "2 <= top_k <= num_experts"),
        ({"d_model": 0}, "positive integer"),
        ({"patch_len": 200}, "shorter patch_len"),
        ({"dropout": 1.0}, r"\[0, 1\)"),
        ({"router_threshold": 0.0}, "set it > 0"),
        ({"capacity_factor_eval": 0.0}, "set it > 0"),
        ({"scan_backend": "cuda-magic"}, "use one of auto"),
    ],
)
def test_bad_settings_raise_with_the_fix(overrides, fix):
    with pytest.raises(ValueError, match=fix):
        MixMambaConfig(seq_len=96, pred_len=96, enc_in=7, **overrides)


def test_config_is_frozen_and_replace_checks_again():
    config = MixMambaConfig(seq_len=96, pred_len=96, enc_in=7, variant="paper")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.d_model = 128
    assert dataclasses.replace(config, d_model=128).d_model == 128
    with pytest.raises(ValueError, match="2 <= top_k <= num_experts"):
        dataclasses.replace(config, top_k=3)
