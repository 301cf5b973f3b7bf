"""MixMamba: instance norm -> patch embedding -> mixture of Mamba experts -> flatten head -> de-norm."""
from __future__ import annotations

import torch
from torch import nn

from mixmamba.config import MixMambaConfig
from mixmamba.experts import MambaExperts
from mixmamba.instance_norm import denormalize, normalize
from mixmamba.moe import MixtureOfMambaExperts
from mixmamba.patching import PatchEmbedding
from mixmamba.router import RoutingStats, TopKRouter


class MixMamba(nn.Module):
    """The MixMamba forecaster of github.com/KhaledAlkilane89/MixMamba (models/mixmamba.py, long-term forecast).

    forward(x (B, seq_len, enc_in), x_mark ignored) -> (forecast (B, pred_len, enc_in), aux_loss ()).
    Channels are independent sequences of patches; one MoE layer of Mamba experts; a linear head per flattened
    (d_model x patch_num) channel representation. After each forward, `last_routing` holds its RoutingStats
    (None before the first) and `routing_statistics()` reports them to a training loop.
    Modules the official model builds but never calls (its `projection` head and the router's unused Mamba) are
    left out.
    """

    def __init__(self, config: MixMambaConfig) -> None:
        super().__init__()
        self.config = config
        official = config.variant == "official"
        self.patch_embedding = PatchEmbedding(
            config.d_model, config.patch_len, config.stride, config.seq_len, config.dropout
        )
        router = TopKRouter(
            config.d_model,
            config.num_experts,
            top_k=config.top_k,
            threshold=config.router_threshold,
            capacity_factor_train=config.capacity_factor_train,
            capacity_factor_eval=config.capacity_factor_eval,
            min_capacity=config.min_capacity,
            noise=config.router_noise,
            balance_loss_coef=config.balance_loss_coef,
            z_loss_coef=config.z_loss_coef,
            official_slot_offsets=config.official_slot_offsets,
        )
        experts = MambaExperts(
            config.num_experts,
            config.d_model,
            config.d_state,
            config.d_conv,
            config.expand,
            n_layers=config.n_layers,
            prenorm_residual=not official,
            official_init=official,
            scan_backend=config.scan_backend,
        )
        self.moe = MixtureOfMambaExperts(router, experts)
        self.head = nn.Linear(config.d_model * config.patch_num, config.pred_len)
        self.head_dropout = nn.Dropout(config.dropout)
        self.last_routing: RoutingStats | None = None

    def draw_random_inputs(self, batch: int, dtype: torch.dtype,
                           generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """The router's random numbers for one forward pass over `batch` windows, drawn now from `generator` in the
        order forward would draw them, as forward's keyword arguments. A loop that trains several models as one
        gives each its own random stream this way."""
        return self.moe.router.draw(batch * self.config.enc_in, self.config.patch_num, dtype, generator)

    def forward(self, x: torch.Tensor, x_mark: torch.Tensor | None = None, route_draws: torch.Tensor | None = None,
                noise_draws: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, seq_len, enc_in) -> (forecast (B, pred_len, enc_in), aux_loss ()); x_mark is accepted and ignored.
        route_draws / noise_draws: the router's random numbers (`draw_random_inputs`), drawn inside when None."""
        config = self.config
        if x.dim() != 3 or x.shape[1:] != (config.seq_len, config.enc_in):
            raise ValueError(
                f"MixMamba expects x of shape (batch, {config.seq_len}, {config.enc_in}), got {tuple(x.shape)}; "
                "build the model with this input's seq_len and enc_in"
            )
        batch, _, channels = x.shape
        if config.use_norm:
            x, mean, std = normalize(x)  # mean, std: (B, 1, N)

        tokens = self.patch_embedding(x.permute(0, 2, 1))  # (B*N, patch_num, d_model)
        tokens, aux_loss, self.last_routing = self.moe(tokens, route_draws, noise_draws)  # (B*N, patch_num, d_model)

        tokens = tokens.reshape(batch, channels, config.patch_num, config.d_model)
        features = tokens.permute(0, 1, 3, 2).flatten(start_dim=-2)  # (B, N, d_model * patch_num), d-major
        forecast = self.head_dropout(self.head(features)).permute(0, 2, 1)  # (B, pred_len, N)

        if config.use_norm:
            forecast = denormalize(forecast, mean, std)
        return forecast, aux_loss

    def routing_statistics(self) -> dict[str, torch.Tensor] | None:
        """How the last forward pass used the experts, or None before any forward.

        expert_share (E,): share of the kept token->expert assignments each expert processed (sums to 1);
        first_choice_share (E,): share of tokens whose top-1 choice is each expert;
        dropped_token_rate (): share of tokens no expert processed. Tensors are detached, on the model's device.
        """
        stats = self.last_routing
        if stats is None:
            return None
        return {
            "expert_share": stats.expert_share,
            "first_choice_share": stats.first_choice_share,
            "dropped_token_rate": stats.dropped_token_rate,
        }

    def extra_repr(self) -> str:
        config = self.config
        return (
            f"variant={config.variant}, seq_len={config.seq_len}, pred_len={config.pred_len}, enc_in={config.enc_in}, "
            f"patch_len={config.patch_len}, stride={config.stride}, patch_num={config.patch_num}, "
            f"use_norm={config.use_norm}"
        )
