"""K same-shaped models as one set of weights stacked on a leading member dim, run in one vectorised pass
(torch.func.vmap over the model's forward): the members of a fused training array."""
from __future__ import annotations

import copy
from typing import Protocol, Sequence, runtime_checkable

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel


@runtime_checkable
class DrawsRandomInputs(Protocol):
    """A model whose forward draws random numbers other than dropout masks (MixMamba's router): it can draw them
    beforehand, as forward's keyword arguments, so that each member of an array draws from its own stream."""

    def draw_random_inputs(self, batch: int, dtype: torch.dtype,
                           generator: torch.Generator | None = None) -> dict[str, torch.Tensor]: ...


class MemberDropout(nn.Module):
    """nn.Dropout whose rate is a buffer, so that each member of a stack has its own rate (a stacked buffer is one
    value per member under vmap). Masks are drawn per member (vmap's randomness="different")."""

    def __init__(self, rate: float, device: torch.device | None = None) -> None:
        super().__init__()
        self.register_buffer("rate", torch.tensor(float(rate), device=device), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        keep = (torch.rand_like(x) >= self.rate).to(x.dtype)
        return x * keep / (1 - self.rate)


def with_member_dropout(model: nn.Module) -> nn.Module:
    """`model` with every nn.Dropout replaced by a MemberDropout of the same rate on the model's device (in place;
    returned)."""
    device = next(model.parameters()).device
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Dropout):
                setattr(parent, name, MemberDropout(child.p, device))
    return model


class MemberStack:
    """The weights of K models of one architecture stacked as (K, ...) tensors, and their vectorised forward.

    `params` are leaf tensors that require grad (an optimiser steps them); `buffers` are stacked too, dropout rates
    included, so members may differ in every value that does not change a shape. The models themselves are not
    kept: a meta-device copy of the first serves as the function vmap runs.
    """

    def __init__(self, models: Sequence[nn.Module]) -> None:
        models = [with_member_dropout(model) for model in models]
        self.template = copy.deepcopy(models[0]).to("meta")
        params, self.buffers = stack_module_state(list(models))
        self.params = {name: tensor.detach().requires_grad_(True) for name, tensor in params.items()}
        self.draws_random_inputs = isinstance(models[0], DrawsRandomInputs)
        self.training = True

    @property
    def size(self) -> int:
        return next(iter(self.params.values())).shape[0]

    def train(self, mode: bool = True) -> None:
        self.training = mode
        self.template.train(mode)

    @property
    def reports_routing(self) -> bool:
        """Whether the members are mixture-of-experts models with routing statistics (`routing_statistics()`)."""
        return callable(getattr(self.template, "routing_statistics", None))

    def forward(self, x: torch.Tensor, x_mark: torch.Tensor | None, draws: dict[str, torch.Tensor], *,
                shared_input: bool = False, with_routing: bool = False,
                ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Every member's (forecast, aux_loss, routing statistics): (K, B, pred_len, C), (K,), name -> (K, ...).

        x, x_mark: (K, B, ...) one batch per member, or (B, ...) one batch for all when `shared_input`.
        draws: the members' random inputs (see `draw`), each (K, ...); empty for models that draw none.
        with_routing: return the pass's routing statistics (else an empty dict).
        """
        batch_dim = None if shared_input else 0

        def member(params: dict, buffers: dict, x: torch.Tensor, x_mark: torch.Tensor | None,
                   draws: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
            forecast, aux_loss = functional_call(self.template, (params, buffers), (x, x_mark), draws)
            routing = self.template.routing_statistics() if with_routing else {}
            return forecast, aux_loss, routing

        # Under vmap the memory-efficient attention kernel's backward rejects the batched log-sum-exp's strides
        # ("LSE is not correctly aligned"); flash attention (bf16) or the math kernel (fp32) serve instead.
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH]):
            return vmap(member, in_dims=(0, 0, batch_dim, batch_dim, 0), randomness="different")(
                self.params, self.buffers, x, x_mark, draws)

    def draw(self, batch: int, generators: Sequence[torch.Generator]) -> dict[str, torch.Tensor]:
        """Each member's random inputs for one forward over `batch` windows from its own generator, stacked (K, ...);
        member k's are what its model, run alone, would draw from a generator in generators[k]'s state."""
        if not self.draws_random_inputs:
            return {}
        dtype = next(iter(self.params.values())).dtype
        drawn = [self.template.draw_random_inputs(batch, dtype, generator) for generator in generators]
        return {name: torch.stack([member[name] for member in drawn]) for name in drawn[0]}

    def keep(self, members: torch.Tensor) -> None:
        """Keep only the members at indices `members` (a 1-D long tensor on the weights' device), in that order."""
        with torch.no_grad():
            self.params = {name: tensor.index_select(0, members).requires_grad_(True)
                           for name, tensor in self.params.items()}
            self.buffers = {name: tensor.index_select(0, members) for name, tensor in self.buffers.items()}

    def member_state_dict(self, member: int) -> dict[str, torch.Tensor]:
        """Member `member`'s weights and persistent buffers as its model's state_dict (detached copies)."""
        persistent = self.template.state_dict().keys()
        state = {name: tensor[member].detach().clone() for name, tensor in self.params.items()}
        state.update({name: tensor[member].clone() for name, tensor in self.buffers.items() if name in persistent})
        return state
