"""PatchTST (Nie et al., ICLR 2023): channel-independent patches of each series through a Transformer encoder.

Follows Time-Series-Library's models/PatchTST.py: instance normalisation, end-padded patching, a bias-free linear
patch embedding plus sinusoidal positions, a post-norm encoder closed by BatchNorm, and a flatten-linear head.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from baselines.instance_norm import denormalize, normalize
from baselines.transformer_encoder import TransformerEncoder, check_encoder_settings


@dataclass
class PatchTSTConfig:
    """PatchTST settings; names and defaults follow TSLib's run.py (patch_len 16 and stride 8 as its model)."""

    seq_len: int
    pred_len: int
    enc_in: int
    d_model: int = 512
    n_heads: int = 8
    e_layers: int = 2
    d_ff: int = 2048
    dropout: float = 0.1
    activation: str = "gelu"
    factor: int = 1  # TSLib's attention factor: kept so reference scripts load; full attention does not use it
    patch_len: int = 16
    stride: int = 8
    use_norm: bool = True

    def __post_init__(self) -> None:
        for name in ("seq_len", "pred_len", "enc_in", "factor", "patch_len", "stride"):
            if getattr(self, name) < 1:
                raise ValueError(f"PatchTSTConfig.{name} must be a positive integer, got {getattr(self, name)}")
        if self.patch_len > self.seq_len + self.stride:
            raise ValueError(
                f"PatchTSTConfig.patch_len ({self.patch_len}) is longer than seq_len + stride "
                f"({self.seq_len} + {self.stride}); use patch_len <= {self.seq_len + self.stride}"
            )
        check_encoder_settings(
            "PatchTSTConfig", self.d_model, self.n_heads, self.e_layers, self.d_ff, self.dropout, self.activation
        )

    @property
    def num_patches(self) -> int:
        """Patches per series after padding the end by one stride (TSLib's int((L - P) / S + 2))."""
        return (self.seq_len + self.stride - self.patch_len) // self.stride + 1


def sinusoidal_positions(num_positions: int, d_model: int) -> torch.Tensor:
    """The fixed sin/cos position table of "Attention is all you need", shape (num_positions, d_model)."""
    position = torch.arange(num_positions, dtype=torch.float32).unsqueeze(1)  # (N, 1)
    frequency = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * -(math.log(10000.0) / d_model))
    table = torch.zeros(num_positions, d_model)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: d_model // 2])
    return table


class PatchTST(nn.Module):
    """Forecast each channel from its own patched lookback: (B, seq_len, enc_in) -> (B, pred_len, enc_in)."""

    def __init__(self, config: PatchTSTConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_embedding = nn.Linear(config.patch_len, config.d_model, bias=False)
        # TSLib keeps a 5000-row table in the state dict; only the first num_patches rows are ever read
        self.register_buffer("positions", sinusoidal_positions(config.num_patches, config.d_model), persistent=False)
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.encoder = TransformerEncoder(
            config.d_model, config.n_heads, config.e_layers, config.d_ff, config.dropout, config.activation
        )
        self.norm = nn.BatchNorm1d(config.d_model)
        self.head = nn.Linear(config.d_model * config.num_patches, config.pred_len)
        self.head_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, x_mark: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, seq_len, enc_in); x_mark is accepted for the common interface and unused."""
        cfg = self.config
        batch, _, channels = x.shape
        if cfg.use_norm:
            x, mean, std = normalize(x)

        # patching: every channel is its own sequence of patches
        series = x.permute(0, 2, 1)  # (B, C, L)
        series = F.pad(series, (0, cfg.stride), mode="replicate")  # (B, C, L + S)
        patches = series.unfold(dimension=-1, size=cfg.patch_len, step=cfg.stride)  # (B, C, N, P)
        patches = patches.reshape(batch * channels, cfg.num_patches, cfg.patch_len)  # (B*C, N, P)

        tokens = self.patch_embedding(patches) + self.positions  # (B*C, N, D)
        tokens = self.encoder(self.embedding_dropout(tokens))  # (B*C, N, D)
        tokens = self.norm(tokens.transpose(1, 2))  # BatchNorm over d_model: (B*C, D, N)

        # flatten d_model-major, patch-minor, as TSLib's head reads it
        features = tokens.reshape(batch, channels, cfg.d_model * cfg.num_patches)  # (B, C, D*N)
        forecast = self.head_dropout(self.head(features)).permute(0, 2, 1)  # (B, pred_len, C)
        if cfg.use_norm:
            forecast = denormalize(forecast, mean, std)
        return forecast, forecast.new_zeros(())
