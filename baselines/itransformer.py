"""iTransformer (Liu et al., ICLR 2024): attention across variates, each variate's whole lookback being one token.

Follows Time-Series-Library's models/iTransformer.py: instance normalisation, DataEmbedding_inverted (time features
join as extra tokens), a post-norm encoder closed by LayerNorm, and a linear map from d_model to the horizon.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from baselines.transformer_encoder import TransformerEncoder, check_encoder_settings
from mixmamba.instance_norm import denormalize, normalize


@dataclass(frozen=True)
class ITransformerConfig:
    """iTransformer settings; names and defaults follow TSLib's run.py."""

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
    use_norm: bool = True

    def __post_init__(self) -> None:
        for name in ("seq_len", "pred_len", "enc_in", "factor"):
            if getattr(self, name) < 1:
                raise ValueError(f"ITransformerConfig.{name} must be a positive integer, got {getattr(self, name)}")
        check_encoder_settings(
            "ITransformerConfig", self.d_model, self.n_heads, self.e_layers, self.d_ff, self.dropout, self.activation
        )


class ITransformer(nn.Module):
    """Forecast all channels jointly from variate tokens: (B, seq_len, enc_in) -> (B, pred_len, enc_in)."""

    def __init__(self, config: ITransformerConfig) -> None:
        super().__init__()
        self.config = config
        # one map shared by every token, so any number of time-feature tokens fits the same weights
        self.embedding = nn.Linear(config.seq_len, config.d_model)
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.encoder = TransformerEncoder(
            config.d_model, config.n_heads, config.e_layers, config.d_ff, config.dropout, config.activation
        )
        self.norm = nn.LayerNorm(config.d_model)
        self.projection = nn.Linear(config.d_model, config.pred_len)

    def forward(self, x: torch.Tensor, x_mark: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, seq_len, enc_in); x_mark (B, seq_len, F) time features become F extra tokens, or None."""
        channels = x.shape[2]
        if self.config.use_norm:
            x, mean, std = normalize(x)

        variates = x.permute(0, 2, 1)  # (B, C, L)
        if x_mark is not None:
            variates = torch.cat([variates, x_mark.permute(0, 2, 1)], dim=1)  # (B, C + F, L)
        tokens = self.embedding_dropout(self.embedding(variates))  # (B, T, D), T = C or C + F
        tokens = self.norm(self.encoder(tokens))  # (B, T, D)

        # only the series' own tokens are forecast; time-feature tokens are context
        forecast = self.projection(tokens).permute(0, 2, 1)[:, :, :channels]  # (B, pred_len, C)
        if self.config.use_norm:
            forecast = denormalize(forecast, mean, std)
        return forecast, forecast.new_zeros(())
