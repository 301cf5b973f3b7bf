"""Adam / AdamW over weights stacked on a leading member dim, each member with its own learning rate, weight decay
and kind of decay: the optimiser of a fused training array, step for step torch.optim.Adam / AdamW per member."""
from __future__ import annotations

from typing import Sequence

import torch

BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults, which TrainConfig's optimisers use
EPS = 1e-8


class StackedAdam:
    """Adam (L2 weight decay added to the gradient) or AdamW (decoupled decay) per member of stacked parameters.

    params: tensors of shape (K, ...) whose slice k belongs to member k. learning_rates, weight_decays: (K,) values;
    decoupled[k]: AdamW for member k, else Adam. The learning rates live in `self.learning_rates`, a (K,) tensor
    on the parameters' device that a schedule updates in place (a captured CUDA step reads that memory).
    With `capturable` the step count is a device tensor too, so that the whole update can be captured in a CUDA
    graph; otherwise it is a Python int and the bias corrections are computed in double precision, as torch's.
    """

    def __init__(self, params: Sequence[torch.Tensor], learning_rates: Sequence[float], weight_decays: Sequence[float],
                 decoupled: Sequence[bool], *, capturable: bool = False) -> None:
        self.params = list(params)
        device = self.params[0].device
        members = self.params[0].shape[0]
        if not (len(learning_rates) == len(weight_decays) == len(decoupled) == members):
            raise ValueError(f"StackedAdam needs one learning rate, weight decay and decay kind per member ({members})")
        dtype = self.params[0].dtype
        self.learning_rates = torch.tensor(list(learning_rates), dtype=dtype, device=device)
        self.l2_decays = torch.tensor([0.0 if adamw else wd for wd, adamw in zip(weight_decays, decoupled)],
                                      dtype=dtype, device=device)
        self.decoupled_decays = torch.tensor([wd if adamw else 0.0 for wd, adamw in zip(weight_decays, decoupled)],
                                             dtype=dtype, device=device)
        self.capturable = capturable
        self.step_count: int | torch.Tensor = torch.zeros((), device=device) if capturable else 0
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drops the gradients (the next backward allocates them; inside a capture, from the graph's pool)."""
        for param in self.params:
            param.grad = None

    @torch.no_grad()
    def step(self) -> None:
        beta1, beta2 = BETAS
        self.step_count += 1
        bias_correction1 = 1 - beta1 ** self.step_count
        bias_correction2_sqrt = (1 - beta2 ** self.step_count) ** 0.5
        for param, exp_avg, exp_avg_sq in zip(self.params, self.exp_avg, self.exp_avg_sq):
            if param.grad is None:
                continue
            per_member = (-1,) + (1,) * (param.dim() - 1)
            learning_rate = self.learning_rates.view(per_member)
            param.mul_(1 - learning_rate * self.decoupled_decays.view(per_member))
            grad = param.grad + self.l2_decays.view(per_member) * param
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(EPS)
            param.sub_(learning_rate / bias_correction1 * exp_avg / denom)

    def keep(self, members: torch.Tensor) -> None:
        """Keep only the members at indices `members` (a 1-D long tensor), in that order; the caller replaces
        `params` by the cut parameters before the next step."""
        self.learning_rates = self.learning_rates.index_select(0, members)
        self.l2_decays = self.l2_decays.index_select(0, members)
        self.decoupled_decays = self.decoupled_decays.index_select(0, members)
        self.exp_avg = [state.index_select(0, members) for state in self.exp_avg]
        self.exp_avg_sq = [state.index_select(0, members) for state in self.exp_avg_sq]
