"""The mixture-of-Mamba-experts layer: route tokens, dispatch them into expert slots, run the experts, combine."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from mixmamba.router import RoutingStats, TopKRouter


class MoEOutput(NamedTuple):
    tokens: torch.Tensor  # (G, n, d)
    aux_loss: torch.Tensor  # ()
    stats: RoutingStats


class MixtureOfMambaExperts(nn.Module):
    """The official st_moe.MoE forward: dispatch einsum -> experts over their slots -> combine einsum.

    `experts` maps (E, G, capacity, d) -> (E, G, capacity, d); each expert runs over its slots in slot order
    (a group's first choices in sequence order, then its later choices), exactly as the official code does.
    A token dropped by every expert comes out as exactly 0 (no residual around the layer, as the official code).
    """

    def __init__(self, router: TopKRouter, experts: nn.Module) -> None:
        super().__init__()
        self.router = router
        self.experts = experts

    def forward(self, tokens: torch.Tensor, route_draws: torch.Tensor | None = None,
                noise_draws: torch.Tensor | None = None) -> MoEOutput:
        """tokens (G, n, d) -> MoEOutput(tokens (G, n, d), aux_loss (), stats); draws as TopKRouter.forward's."""
        routing = self.router(tokens, route_draws, noise_draws)
        expert_inputs = torch.einsum("gnd,gnec->egcd", tokens, routing.dispatch)  # (E, G, c, d)
        expert_outputs = self.experts(expert_inputs)  # (E, G, c, d)
        combined = torch.einsum("egcd,gnec->gnd", expert_outputs, routing.combine)  # (G, n, d)
        return MoEOutput(combined, routing.aux_loss, routing.stats)
