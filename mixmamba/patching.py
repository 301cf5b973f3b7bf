"""Patching and patch embedding: each channel's lookback cut into overlapping patches, embedded as tokens.

Shared with baselines/patchtst.py (TSLib's PatchTST patches the same way); it lives here because mixmamba/ imports
nothing but torch.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def patch_num(seq_len: int, patch_len: int, stride: int) -> int:
    """Patches per channel: the lookback padded by `stride` repeats of its last value, cut every `stride`.

    TSLib and the official MixMamba write it int((seq_len - patch_len) / stride + 2).
    """
    return (seq_len + stride - patch_len) // stride + 1


def sinusoidal_positions(length: int, d_model: int) -> torch.Tensor:
    """(length, d_model) fixed sin/cos position codes (Transformer / Time-Series-Library PositionalEmbedding)."""
    position = torch.arange(length, dtype=torch.float32)[:, None]  # (length, 1)
    frequency = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * -(math.log(10000.0) / d_model))
    codes = torch.zeros(length, d_model)
    codes[:, 0::2] = torch.sin(position * frequency)
    codes[:, 1::2] = torch.cos(position * frequency[: d_model // 2])
    return codes


class PatchEmbedding(nn.Module):
    """(B, N, L) -> (B * N, patch_num, d_model), as Time-Series-Library's PatchEmbedding with padding = stride.

    The end of the lookback is padded by repeating its last value `stride` times, cut into patches of `patch_len`
    every `stride`, projected by a bias-free linear map, plus sinusoidal positions, then dropout. Channels become
    independent sequences (channel independence).
    """

    def __init__(self, d_model: int, patch_len: int, stride: int, seq_len: int, dropout: float) -> None:
        super().__init__()
        self.patch_len = patch_len
        self.stride = stride
        self.patch_num = patch_num(seq_len, patch_len, stride)
        self.padding = nn.ReplicationPad1d((0, stride))
        self.value_embedding = nn.Linear(patch_len, d_model, bias=False)
        # TSLib keeps a 5000-row table in the state dict; only the first patch_num rows are ever read
        self.register_buffer("positions", sinusoidal_positions(self.patch_num, d_model), persistent=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.padding(x)  # (B, N, L + stride)
        patches = x.unfold(dimension=-1, size=self.patch_len, step=self.stride)  # (B, N, patch_num, patch_len)
        patches = patches.reshape(-1, patches.shape[2], self.patch_len)  # (B * N, patch_num, patch_len)
        return self.dropout(self.value_embedding(patches) + self.positions)
