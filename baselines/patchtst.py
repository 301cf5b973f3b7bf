"""PatchTST (Nie et al., ICLR 2023): channel-independent patches of each series through a Transformer encoder.

Follows Time-Series-Library's models/PatchTST.py: instance normalisation, end-padded patching, a bias-free linear
patch embedding plus sinusoidal positions, a post-norm encoder closed by BatchNorm, and a flatten-linear head.
The normalisation and the patch embedding are MixMamba's (mixmamba/instance_norm.py, mixmamba/patching.py): TSLib's
PatchTST and the official MixMamba share them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from baselines.transformer_encoder import TransformerEncoder, check_encoder_settings
from mixmamba import patching
from mixmamba.instance_norm import denormalize, normalize


@dataclass(frozen=True)
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
    def patch_num(self) -> int:
        """Patches per series (see `mixmamba.patching.patch_num`)."""
        return patching.patch_num(self.seq_len, self.patch_len, self.stride)


class PatchTST(nn.Module):
    """Forecast each channel from its own patched lookback: (B, seq_len, enc_in) -> (B, pred_len, enc_in)."""

    def __init__(self, config: PatchTSTConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_embedding = patching.PatchEmbedding(
            config.d_model, config.patch_len, config.stride, config.seq_len, config.dropout
        )
        self.encoder = TransformerEncoder(
            config.d_model, config.n_heads, config.e_layers, config.d_ff, config.dropout, config.activation
        )
        self.norm = nn.BatchNorm1d(config.d_model)
        self.head = nn.Linear(config.d_model * config.patch_num, config.pred_len)
        self.head_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, x_mark: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, seq_len, enc_in); x_mark is accepted for the common interface and unused."""
        cfg = self.config
        batch, _, channels = x.shape
        if cfg.use_norm:
            x, mean, std = normalize(x)

        # patching: every channel is its own sequence of patches
        tokens = self.patch_embedding(x.permute(0, 2, 1))  # (B*C, N, D)
        tokens = self.encoder(tokens)  # (B*C, N, D)
        tokens = self.norm(tokens.transpose(1, 2))  # BatchNorm over d_model: (B*C, D, N)

        # flatten d_model-major, patch-minor, as TSLib's head reads it
        features = tokens.reshape(batch, channels, cfg.d_model * cfg.patch_num)  # (B, C, D*N)
        forecast = self.head_dropout(self.head(features)).permute(0, 2, 1)  # (B, pred_len, C)
        if cfg.use_norm:
            forecast = denormalize(forecast, mean, std)
        return forecast, forecast.new_zeros(())
