"""The ST-MoE top-k router exactly as the official MixMamba runs it (layers/st_moe.py, TopNGating).

It assigns each token's top-k requests to fixed-capacity expert slots (as slot indices and gates, which the MoE layer
gathers and scatters by), and computes the balance and z auxiliary losses and per-expert usage statistics.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-9  # the official gate eps: clamps the renormalisation denominator


@dataclass
class RoutingStats:
    """How one forward pass used the experts; tensors are detached and stay on the model's device (no host sync).

    expert_share: (E,) share of the kept token->expert assignments that each expert processed (sums to 1).
    first_choice_share: (E,) share of tokens whose top-1 choice is each expert (what the balance loss equalises).
    dropped_token_rate: () share of tokens that no expert processed (their MoE output is exactly 0).
    dropped_assignment_rate: () share of requested assignments (first choices plus the later choices that won their
        coin flip) dropped because the expert's capacity was full.
    capacity: slots per expert per group in this pass.
    """

    expert_share: torch.Tensor
    first_choice_share: torch.Tensor
    dropped_token_rate: torch.Tensor
    dropped_assignment_rate: torch.Tensor
    capacity: int


@dataclass
class Routing:
    """The router's output for tokens (G groups, n tokens, d) and E experts of `capacity` slots each.

    request_slots: (k, G, n) long, the slot each token's i-th choice fills, numbered expert * capacity + slot;
        E * capacity (one past the last slot) where that request was not made or was dropped.
    request_gates: (k, G, n) the request's renormalised gate where it fills a slot, else 0. The official dense form
        is combine[g, n, e, c] = the sum of request_gates over the requests of token n in slot (e, c), and
        dispatch = (combine > 0) carrying combine's gradient (straight-through).
    balance_loss, z_loss: () unweighted; zero in eval mode (as the official code).
    aux_loss: () balance_loss_coef * balance_loss + z_loss_coef * z_loss.
    """

    request_slots: torch.Tensor
    request_gates: torch.Tensor
    balance_loss: torch.Tensor
    z_loss: torch.Tensor
    aux_loss: torch.Tensor
    stats: RoutingStats


class TopKRouter(nn.Module):
    """ST-MoE top-k gating over groups of tokens (a group = one channel's patch sequence in MixMamba).

    Per token: logits = W x (no bias); optional Gumbel noise (noise * -log(-log(uniform)), off in the official
    forward); softmax; top-k; the k gates renormalised to sum to 1. The first choice is always requested, the i-th
    (i >= 2) with probability min(1, gate_i / threshold). Each expert has capacity
    c = max(min(n, int(n * capacity_factor / E)), min_capacity) slots per group (factor 1.25 train / 2.0 eval);
    slots are filled in sequence order, first choices before second choices, and requests beyond c are dropped.
    A kept assignment's combine weight is its renormalised gate (the gates are not renormalised again when a later
    choice is skipped or dropped).
    Losses, in training only: balance = mean over groups and experts of (mean gate prob x fraction of tokens whose
    first choice is the expert) x E^2; z = mean(logsumexp(logits)^2).

    Random draws come from `route_draws` / `noise_draws` when given (tests), else from `self.generator` (None:
    torch's global generator; on a GPU it must be a generator of that device). The coin flips happen in eval mode
    too, as in the official code, so eval forecasts are reproducible only with a seeded generator.

    official_slot_offsets: see MixMambaConfig; True reproduces the official slot arithmetic.
    """

    def __init__(
        self,
        d_model: int,
        num_experts: int,
        top_k: int = 2,
        threshold: float = 0.2,
        capacity_factor_train: float = 1.25,
        capacity_factor_eval: float = 2.0,
        min_capacity: int = 8,
        noise: float = 0.0,
        balance_loss_coef: float = 1e-2,
        z_loss_coef: float = 1e-3,
        official_slot_offsets: bool = True,
    ) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.top_k = top_k
        self.threshold = threshold
        self.capacity_factor_train = capacity_factor_train
        self.capacity_factor_eval = capacity_factor_eval
        self.min_capacity = min_capacity
        self.noise = noise
        self.balance_loss_coef = balance_loss_coef
        self.z_loss_coef = z_loss_coef
        self.official_slot_offsets = official_slot_offsets
        self.generator: torch.Generator | None = None
        self.gate = nn.Linear(d_model, num_experts, bias=False)

    def capacity(self, group_size: int) -> int:
        """Slots per expert per group of `group_size` tokens in the current mode (train / eval)."""
        factor = self.capacity_factor_train if self.training else self.capacity_factor_eval
        return max(min(group_size, int(group_size * factor / self.num_experts)), self.min_capacity)

    def draw(self, groups: int, group_size: int, dtype: torch.dtype, generator: torch.Generator | None = None,
             given: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The random numbers one forward pass over (groups, group_size) tokens uses, as its keyword arguments:
        noise_draws (G, n, E) when noise > 0, then route_draws (top_k - 1, G, n); those in `given` are kept, the
        others drawn from `generator` in that order."""
        draws = dict(given or {})
        device = generator.device if generator is not None else self.gate.weight.device
        if self.noise > 0 and "noise_draws" not in draws:
            draws["noise_draws"] = torch.rand((groups, group_size, self.num_experts), generator=generator,
                                              device=device, dtype=dtype)
        if "route_draws" not in draws:
            draws["route_draws"] = torch.rand((self.top_k - 1, groups, group_size), generator=generator,
                                              device=device, dtype=dtype)
        return draws

    def forward(
        self,
        x: torch.Tensor,
        route_draws: torch.Tensor | None = None,
        noise_draws: torch.Tensor | None = None,
    ) -> Routing:
        """x (G, n, d). route_draws (top_k - 1, G, n) uniform [0, 1): the coin flips of choices 2..k;
        noise_draws (G, n, E) uniform (0, 1): the Gumbel noise source (used only when noise > 0)."""
        groups, group_size, _ = x.shape
        num_experts, top_k = self.num_experts, self.top_k
        capacity = self.capacity(group_size)

        logits = self.gate(x)  # (G, n, E)
        noisy_logits = logits
        given = {"noise_draws": noise_draws, "route_draws": route_draws}
        drawn = self.draw(groups, group_size, x.dtype, self.generator,
                          {name: draws for name, draws in given.items() if draws is not None})
        route_draws, noise_draws = drawn["route_draws"], drawn.get("noise_draws")
        if self.noise > 0:
            gumbel = -torch.log((-torch.log(noise_draws.clamp(min=1e-20))).clamp(min=1e-20))
            noisy_logits = logits + self.noise * gumbel
        raw_gates = noisy_logits.softmax(dim=-1)  # (G, n, E)

        top_gates, top_experts = raw_gates.topk(top_k, dim=-1)  # (G, n, k)
        top_gates = top_gates / top_gates.sum(dim=-1, keepdim=True).clamp(min=EPS)
        top_gates = top_gates.permute(2, 0, 1)  # (k, G, n)
        choice = F.one_hot(top_experts.permute(2, 0, 1), num_experts).to(x.dtype)  # (k, G, n, E)

        later_requested = route_draws < top_gates[1:] / self.threshold  # (k-1, G, n)
        requested = torch.cat([torch.ones_like(later_requested[:1]), later_requested])  # (k, G, n)
        requests = choice * requested[..., None].to(x.dtype)  # (k, G, n, E)

        # Slot of each request = earlier requests for the same expert in the group at the same choice, plus the
        # requests kept at the previous choice(s): first choices fill slots 0.., then second choices, ...
        earlier = requests.cumsum(dim=2) - requests  # (k, G, n, E) exclusive cumsum along the sequence
        offset = requests.new_zeros(groups, 1, num_experts)
        kept, slots = [], []
        for i in range(top_k):
            slot = (earlier[i] + offset) * requests[i]  # (G, n, E)
            keep = requests[i] * (slot < capacity).to(x.dtype)  # (G, n, E)
            kept_count = keep.sum(dim=1, keepdim=True)  # (G, 1, E)
            offset = kept_count if self.official_slot_offsets else offset + kept_count
            kept.append(keep)
            slots.append(slot.sum(dim=-1))  # (G, n): a request has one expert
        kept = torch.stack(kept)  # (k, G, n, E)
        filled = kept.sum(dim=-1)  # (k, G, n) 1 where the request holds a slot
        expert_slots = top_experts.permute(2, 0, 1) * capacity + torch.stack(slots).long()  # (k, G, n)
        request_slots = torch.where(filled > 0, expert_slots, num_experts * capacity)
        request_gates = top_gates * filled

        if self.training:
            first_choice_density = choice[0].mean(dim=1)  # (G, E)
            gate_density = raw_gates.mean(dim=1)  # (G, E)
            balance_loss = (gate_density * first_choice_density).mean() * float(num_experts**2)
            z_loss = torch.logsumexp(logits, dim=-1).square().mean()
        else:
            balance_loss = logits.new_zeros(())
            z_loss = logits.new_zeros(())
        aux_loss = self.balance_loss_coef * balance_loss + self.z_loss_coef * z_loss

        with torch.no_grad():
            kept_per_expert = kept.sum(dim=(0, 1, 2))  # (E,)
            kept_total = kept_per_expert.sum()
            requested_total = requests.sum()
            stats = RoutingStats(
                expert_share=kept_per_expert / kept_total.clamp(min=1.0),
                first_choice_share=choice[0].mean(dim=(0, 1)),
                dropped_token_rate=(kept.sum(dim=(0, 3)) == 0).to(x.dtype).mean(),
                dropped_assignment_rate=(requested_total - kept_total) / requested_total,
                capacity=capacity,
            )
        return Routing(request_slots, request_gates, balance_loss, z_loss, aux_loss, stats)

    def extra_repr(self) -> str:
        return (
            f"num_experts={self.num_experts}, top_k={self.top_k}, threshold={self.threshold}, "
            f"capacity_factor=({self.capacity_factor_train}, {self.capacity_factor_eval}), "
            f"min_capacity={self.min_capacity}, noise={self.noise}, official_slot_offsets={self.official_slot_offsets}"
        )
