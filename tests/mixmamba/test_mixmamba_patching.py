"""Patching: the lookback's end padded by repeating its last value, overlapping patches, sinusoidal positions."""
from __future__ import annotations

import math

import pytest
import torch

from mixmamba.patching import PatchEmbedding, patch_num, sinusoidal_positions


def test_patches_cover_the_padded_lookback():
    embedding = PatchEmbedding(d_model=4, patch_len=4, stride=2, seq_len=6, dropout=0.0)
    with torch.no_grad():
        embedding.value_embedding.weight.copy_(torch.eye(4))  # tokens = patch values + positions
    x = torch.arange(12.0).view(1, 2, 6)  # (B, N, L)
    tokens = embedding(x) - embedding.positions  # (B*N, patch_num, d)
    assert tokens.shape == (2, 3, 4)  # (6 + 2 - 4) // 2 + 1 patches per channel
    assert tokens[0].tolist() == [[0.0, 1.0, 2.0, 3.0], [2.0, 3.0, 4.0, 5.0], [4.0, 5.0, 5.0, 5.0]]
    assert tokens[1, 0].tolist() == [6.0, 7.0, 8.0, 9.0]  # channel 2 is its own sequence


def test_sinusoidal_positions():
    codes = sinusoidal_positions(5, 6)
    assert codes.shape == (5, 6)
    assert codes[0].tolist() == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    assert math.isclose(codes[3, 2].item(), math.sin(3 * 10000 ** (-2 / 6)), rel_tol=1e-6)
    assert math.isclose(codes[3, 5].item(), math.cos(3 * 10000 ** (-4 / 6)), rel_tol=1e-6)


@pytest.mark.parametrize("seq_len, patch_len, stride", [(96, 16, 8), (36, 16, 8), (100, 24, 12), (6, 4, 2), (7, 7, 3)])
def test_patch_num_is_the_official_count_and_what_the_embedding_yields(seq_len, patch_len, stride):
    count = patch_num(seq_len, patch_len, stride)
    assert count == int((seq_len - patch_len) / stride + 2)  # models/mixmamba.py's head_nf / d_model
    embedding = PatchEmbedding(d_model=4, patch_len=patch_len, stride=stride, seq_len=seq_len, dropout=0.0)
    assert embedding(torch.randn(2, 3, seq_len)).shape == (6, count, 4) and embedding.patch_num == count
