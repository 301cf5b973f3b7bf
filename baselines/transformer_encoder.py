"""The post-norm Transformer encoder layer that TSLib's PatchTST and iTransformer share.

Same parameters and maths as TSLib's EncoderLayer + AttentionLayer + FullAttention (unmasked). TSLib writes the
feed-forward as Conv1d(kernel_size=1); a Linear over the last dimension is the same map with the same parameter count.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = ("relu", "gelu")


class FullSelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention over all tokens, with query/key/value/output projections."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.query_projection = nn.Linear(d_model, d_model)
        self.key_projection = nn.Linear(d_model, d_model)
        self.value_projection = nn.Linear(d_model, d_model)
        self.out_projection = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, d_model = x.shape  # x: (B, N, D)
        head_dim = d_model // self.n_heads
        q = self.query_projection(x).view(batch, tokens, self.n_heads, head_dim).transpose(1, 2)  # (B, H, N, E)
        k = self.key_projection(x).view(batch, tokens, self.n_heads, head_dim).transpose(1, 2)  # (B, H, N, E)
        v = self.value_projection(x).view(batch, tokens, self.n_heads, head_dim).transpose(1, 2)  # (B, H, N, E)
        # softmax(q k^T / sqrt(E)) v with dropout on the attention weights, as TSLib's FullAttention
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)  # (B, H, N, E)
        out = out.transpose(1, 2).reshape(batch, tokens, d_model)  # (B, N, D)
        return self.out_projection(out)


class EncoderLayer(nn.Module):
    """Self-attention then a two-layer feed-forward, each added back and followed by LayerNorm (post-norm)."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float, activation: str) -> None:
        super().__init__()
        self.attention = FullSelfAttention(d_model, n_heads, dropout)
        self.ff_in = nn.Linear(d_model, d_ff)
        self.ff_out = nn.Linear(d_ff, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.activation = F.relu if activation == "relu" else F.gelu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.dropout(self.attention(x)))  # (B, N, D)
        y = self.dropout(self.activation(self.ff_in(x)))  # (B, N, d_ff)
        y = self.dropout(self.ff_out(y))  # (B, N, D)
        return self.norm2(x + y)


class TransformerEncoder(nn.Module):
    """A stack of e_layers encoder layers; the final norm is left to the model (BatchNorm or LayerNorm)."""

    def __init__(self, d_model: int, n_heads: int, e_layers: int, d_ff: int, dropout: float, activation: str) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            EncoderLayer(d_model, n_heads, d_ff, dropout, activation) for _ in range(e_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)  # (B, N, D)
        return x


def check_encoder_settings(
    owner: str, d_model: int, n_heads: int, e_layers: int, d_ff: int, dropout: float, activation: str
) -> None:
    """Raise ValueError, naming `owner` (the config class) and the fix, if the encoder settings cannot build."""
    for name, value in (("d_model", d_model), ("n_heads", n_heads), ("e_layers", e_layers), ("d_ff", d_ff)):
        if value < 1:
            raise ValueError(f"{owner}.{name} must be a positive integer, got {value}")
    if d_model % n_heads != 0:
        raise ValueError(f"{owner}.d_model ({d_model}) must be divisible by n_heads ({n_heads}); change either")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"{owner}.dropout must be in [0, 1), got {dropout}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"{owner}.activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
