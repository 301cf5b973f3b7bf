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
    """The official st_moe.MoE forward (dispatch einsum -> experts over their slots -> combine einsum), computed by
    index: each request's token is scattered into its slot and each token gathers its slots' outputs, so the cost
    grows with tokens x top_k instead of tokens x experts x capacity.

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
        groups, length, width = tokens.shape
        top_k, slots = routing.request_slots.shape[0], self.router.num_experts * routing.stats.capacity
        index = routing.request_slots.transpose(0, 1).reshape(groups, top_k * length, 1).expand(-1, -1, width)
        # In the tokens' dtype: under bf16 autocast the router's softmax gives fp32 gates, which would promote the
        # experts' inputs and the layer's output to fp32.
        gates = routing.request_gates.transpose(0, 1).reshape(groups, top_k * length, 1).to(tokens.dtype)
        # The official dispatch is 1 at a filled slot and carries the gate's gradient (straight-through): the
        # bracket is exactly 0 forward. Requests not filled go to slot `slots`, cut off below.
        requests = tokens.repeat(1, top_k, 1) * (1 + (gates - gates.detach()))  # (G, k n, d)
        expert_inputs = tokens.new_zeros(groups, slots + 1, width).scatter_add(1, index, requests)
        expert_inputs = expert_inputs[:, :slots].reshape(groups, self.router.num_experts, -1, width)
        expert_outputs = self.experts(expert_inputs.transpose(0, 1))  # (E, G, c, d)
        outputs = torch.cat([expert_outputs.transpose(0, 1).reshape(groups, slots, width),
                             tokens.new_zeros(groups, 1, width)], dim=1)  # (G, E c + 1, d), the last slot empty
        combined = (outputs.gather(1, index) * gates).reshape(groups, top_k, length, width).sum(dim=1)  # (G, n, d)
        return MoEOutput(combined, routing.aux_loss, routing.stats)
