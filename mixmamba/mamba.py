"""One Mamba-1 block with exactly mamba_ssm.Mamba's parameters, names and initialisation (its non-fused path).

The batched experts store E of these stacked; this single block is the per-expert reference they are tested and
benchmarked against, and the layout their per-expert state dicts load into.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mixmamba.scan import selective_scan


class Mamba(nn.Module):
    """mamba_ssm.modules.mamba_simple.Mamba with default options (no biases but the conv's, SiLU, dt_rank auto)."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        scan_backend: str = "auto",
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16)
        self.scan_backend = scan_backend

        self.in_proj = nn.Linear(d_model, self.d_inner * 2, bias=False)
        self.conv1d = nn.Conv1d(
            self.d_inner, self.d_inner, kernel_size=d_conv, groups=self.d_inner, padding=d_conv - 1, bias=True
        )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

        # dt_proj keeps the variance of dt at init; its bias makes softplus(bias) log-uniform in [dt_min, dt_max].
        nn.init.uniform_(self.dt_proj.weight, -self.dt_rank**-0.5, self.dt_rank**-0.5)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus

        # S4D-real: A[d, n] = -(n + 1), stored as log so it stays negative.
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(self.d_inner, 1))
        self.D = nn.Parameter(torch.ones(self.d_inner))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(batch, L, d_model) -> (batch, L, d_model); causal along L."""
        length = hidden_states.shape[1]
        xz = self.in_proj(hidden_states).transpose(1, 2)  # (b, 2 * d_inner, L)
        x, z = xz.chunk(2, dim=1)  # (b, d_inner, L) each
        x = F.silu(self.conv1d(x)[..., :length])  # causal: keep the first L outputs of the left-padded conv

        x_dbl = self.x_proj(x.transpose(1, 2))  # (b, L, dt_rank + 2N)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight).transpose(1, 2)  # (b, d_inner, L); its bias goes in as delta_bias
        B = B.transpose(1, 2).unsqueeze(1)  # (b, 1, N, L)
        C = C.transpose(1, 2).unsqueeze(1)  # (b, 1, N, L)
        A = -torch.exp(self.A_log)  # (d_inner, N)
        y = selective_scan(
            x, dt, A, B, C, self.D, z=z, delta_bias=self.dt_proj.bias, delta_softplus=True, backend=self.scan_backend
        )  # (b, d_inner, L)
        return self.out_proj(y.transpose(1, 2))
