"""E Mamba-1 experts run at once from weights stacked on a leading expert dim, and their per-expert state dicts.

One batched matmul per projection, one grouped conv1d and one selective scan (experts folded into the channel dim,
B/C grouped by expert) serve all experts; there is no Python loop over experts.
"""
from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from mixmamba.mamba import Mamba
from mixmamba.scan import resolve_scan_backend, selective_scan

# mamba_ssm.Mamba parameter name -> the stacked parameter holding it for every expert.
MAMBA_PARAMETERS = {
    "in_proj.weight": "in_proj_weight",
    "conv1d.weight": "conv1d_weight",
    "conv1d.bias": "conv1d_bias",
    "x_proj.weight": "x_proj_weight",
    "dt_proj.weight": "dt_proj_weight",
    "dt_proj.bias": "dt_proj_bias",
    "A_log": "A_log",
    "D": "D",
    "out_proj.weight": "out_proj_weight",
}


def _to_channels(t: torch.Tensor) -> torch.Tensor:
    """(E, b, L, c) -> (b, E * c, L): experts folded into the channel dim, expert-major."""
    experts, batch, length, channels = t.shape
    return t.permute(1, 0, 3, 2).reshape(batch, experts * channels, length)


def _from_channels(t: torch.Tensor, experts: int) -> torch.Tensor:
    """(b, E * c, L) -> (E, b, L, c)."""
    batch, folded, length = t.shape
    return t.reshape(batch, experts, folded // experts, length).permute(1, 0, 3, 2)


class StackedMamba(nn.Module):
    """E independent Mamba-1 blocks (mamba_ssm.Mamba defaults) whose parameters carry a leading expert dim.

    With `prenorm_residual` each expert computes x + Mamba(RMSNorm(x)) (the paper's Algorithm 1 step) with the
    official st_moe RMSNorm: normalize(x) * sqrt(d_model) * weight.
    """

    def __init__(
        self,
        num_experts: int,
        d_model: int,
        d_state: int,
        d_conv: int,
        expand: int,
        prenorm_residual: bool = False,
        scan_backend: str = "auto",
    ) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16)
        self.prenorm_residual = prenorm_residual
        self.scan_backend = scan_backend

        # Start from E freshly initialised reference blocks so the stacked init is mamba_ssm's, expert by expert.
        blocks = [Mamba(d_model, d_state, d_conv, expand) for _ in range(num_experts)]
        block_parameters = [dict(block.named_parameters()) for block in blocks]
        for mamba_name, stacked_name in MAMBA_PARAMETERS.items():
            stacked = torch.stack([parameters[mamba_name].detach() for parameters in block_parameters])
            self.register_parameter(stacked_name, nn.Parameter(stacked))
        # Shapes: in_proj_weight (E, 2*d_inner, d_model); conv1d_weight (E, d_inner, 1, d_conv);
        # conv1d_bias (E, d_inner); x_proj_weight (E, dt_rank + 2N, d_inner); dt_proj_weight (E, d_inner, dt_rank);
        # dt_proj_bias (E, d_inner); A_log (E, d_inner, N); D (E, d_inner); out_proj_weight (E, d_model, d_inner).
        self.norm_weight = nn.Parameter(torch.ones(num_experts, d_model)) if prenorm_residual else None

    def official_init_(self) -> None:
        """The official Expert.init_: every Linear / Conv1d weight and bias inside the Mamba drawn from
        uniform(-out^-0.5, out^-0.5), out = that module's weight.shape[0] (dt_proj's bias included)."""
        out_dims = {
            "in_proj_weight": 2 * self.d_inner,
            "conv1d_weight": self.d_inner,
            "conv1d_bias": self.d_inner,
            "x_proj_weight": self.dt_rank + 2 * self.d_state,
            "dt_proj_weight": self.d_inner,
            "dt_proj_bias": self.d_inner,
            "out_proj_weight": self.d_model,
        }
        with torch.no_grad():
            for name, out_dim in out_dims.items():
                getattr(self, name).uniform_(-(out_dim**-0.5), out_dim**-0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(E, b, L, d_model) -> (E, b, L, d_model); expert e sees only x[e]; causal along L."""
        experts, _, length, _ = x.shape
        hidden = x
        if self.prenorm_residual:
            hidden = F.normalize(x, dim=-1) * self.d_model**0.5 * self.norm_weight[:, None, None, :]

        xz = torch.einsum("ebld,eod->eblo", hidden, self.in_proj_weight)  # (E, b, L, 2*d_inner)
        u, z = xz.chunk(2, dim=-1)  # (E, b, L, d_inner) each
        u = _to_channels(u)  # (b, E*d_inner, L)
        channels = u.shape[1]
        # Weights cast to u's dtype here, not by autocast: under torch.vmap (fused training arrays) autocast casts
        # the input but not the batched bias. Outside autocast it is a no-op.
        u = F.conv1d(
            u,
            self.conv1d_weight.reshape(channels, 1, self.d_conv).to(u.dtype),
            self.conv1d_bias.reshape(channels).to(u.dtype),
            padding=self.d_conv - 1,
            groups=channels,
        )[..., :length]  # causal: the left-padded depthwise conv's first L outputs
        u = F.silu(u)

        x_dbl = torch.einsum("ebld,eod->eblo", _from_channels(u, experts), self.x_proj_weight)  # (E, b, L, R+2N)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = torch.einsum("eblr,edr->ebld", dt, self.dt_proj_weight)  # (E, b, L, d_inner); bias added in the scan
        B = B.permute(1, 0, 3, 2)  # (b, E, N, L): group e serves expert e's d_inner channels
        C = C.permute(1, 0, 3, 2)  # (b, E, N, L)
        A = -torch.exp(self.A_log).reshape(channels, self.d_state)  # (E*d_inner, N)
        y = selective_scan(
            u,
            _to_channels(dt),
            A,
            B,
            C,
            self.D.reshape(channels),
            z=_to_channels(z),
            delta_bias=self.dt_proj_bias.reshape(channels),
            delta_softplus=True,
            backend=self.scan_backend,
        )  # (b, E*d_inner, L)
        out = torch.einsum("ebld,eod->eblo", _from_channels(y, experts), self.out_proj_weight)  # (E, b, L, d_model)
        return x + out if self.prenorm_residual else out


class MambaExperts(nn.Module):
    """The experts of MixMamba: E Mamba-1 experts of `n_layers` stacked layers each, run in one batched pass.

    official variant: n_layers=1, no norm, no residual, official init_. paper variant: n_layers x pre-norm residual
    layers, mamba_ssm init.
    Per-expert state dicts use mamba_ssm names: `experts.{e}.in_proj.weight`, ... (one plain layer) or
    `experts.{e}.layers.{l}.norm.weight` / `experts.{e}.layers.{l}.mixer.in_proj.weight`, ... (pre-norm layers, as
    mamba_ssm's Block names its norm and mixer).
    """

    def __init__(
        self,
        num_experts: int,
        d_model: int,
        d_state: int,
        d_conv: int = 4,
        expand: int = 2,
        n_layers: int = 1,
        prenorm_residual: bool = False,
        official_init: bool = False,
        scan_backend: str = "auto",
    ) -> None:
        super().__init__()
        if n_layers != 1 and not prenorm_residual:
            raise ValueError(f"MambaExperts n_layers={n_layers} needs prenorm_residual=True; set n_layers=1")
        self.num_experts = num_experts
        self.prenorm_residual = prenorm_residual
        self.layers = nn.ModuleList(
            StackedMamba(num_experts, d_model, d_state, d_conv, expand, prenorm_residual, scan_backend)
            for _ in range(n_layers)
        )
        if official_init:
            for layer in self.layers:
                layer.official_init_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(E, b, L, d_model) -> (E, b, L, d_model)."""
        for layer in self.layers:
            x = layer(x)
        return x

    def _per_expert_names(self) -> list[tuple[str, StackedMamba, str]]:
        """(per-expert key with `{e}` left open, layer, stacked parameter name) for every parameter."""
        names = []
        for index, layer in enumerate(self.layers):
            if self.prenorm_residual:
                prefix = f"experts.{{e}}.layers.{index}."
                names.append((prefix + "norm.weight", layer, "norm_weight"))
                names += [(prefix + "mixer." + key, layer, stacked) for key, stacked in MAMBA_PARAMETERS.items()]
            else:
                names += [("experts.{e}." + key, layer, stacked) for key, stacked in MAMBA_PARAMETERS.items()]
        return names

    def per_expert_state_dict(self) -> dict[str, torch.Tensor]:
        """Every expert's weights under mamba_ssm-style keys (see the class docstring); tensors are detached copies."""
        state = {}
        for key, layer, stacked in self._per_expert_names():
            for e, tensor in enumerate(getattr(layer, stacked).detach()):
                state[key.format(e=e)] = tensor.clone()
        return state

    def load_per_expert_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load weights written by `per_expert_state_dict` (or gathered from mamba_ssm.Mamba blocks); strict."""
        expected = {key.format(e=e) for key, _, _ in self._per_expert_names() for e in range(self.num_experts)}
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise ValueError(
                f"per-expert state dict does not match these experts: missing {missing[:4]}, unexpected "
                f"{unexpected[:4]}; export it from experts with the same variant, num_experts and n_layers"
            )
        with torch.no_grad():
            for key, layer, stacked in self._per_expert_names():
                target = getattr(layer, stacked)
                for e in range(self.num_experts):
                    source = state[key.format(e=e)]
                    if source.shape != target.shape[1:]:
                        raise ValueError(
                            f"{key.format(e=e)} has shape {tuple(source.shape)}, expected {tuple(target.shape[1:])}; "
                            "export it from experts with the same d_model, d_state, d_conv and expand"
                        )
                    target[e].copy_(source)

    def extra_repr(self) -> str:
        layer = self.layers[0]
        resolved = resolve_scan_backend(layer.scan_backend, layer.A_log)
        return (
            f"num_experts={self.num_experts}, d_model={layer.d_model}, d_state={layer.d_state}, "
            f"d_conv={layer.d_conv}, d_inner={layer.d_inner}, n_layers={len(self.layers)}, "
            f"prenorm_residual={self.prenorm_residual}, scan_backend={layer.scan_backend} -> {resolved}"
        )
