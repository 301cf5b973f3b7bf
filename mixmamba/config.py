"""MixMambaConfig: every setting of the MixMamba forecaster, checked when it is built."""
from __future__ import annotations

from dataclasses import dataclass

from mixmamba import patching
from mixmamba.scan import scan_backend_names

VARIANTS = ("official", "paper")
# What the official code's experts really run: layers/st_moe.py's MoE builds `Expert(dim=dim)`, whose defaults are
# d_state=8, d_conv=4, expand=2, whatever --d_state / --d_conv / --expand say.
OFFICIAL_EXPERT = {"d_state": 8, "d_conv": 4, "expand": 2}
PAPER_D_STATE = 16  # mamba_ssm's default, used by the paper variant when d_state is unset


@dataclass(frozen=True)
class MixMambaConfig:
    """MixMamba (Alkilane, He & Lee, Information Fusion 112, 2024): patches -> top-k mixture of Mamba experts -> head.

    variant:
      "official"  what github.com/KhaledAlkilane89/MixMamba runs: one Mamba per expert, no norm, no residual,
                  d_state 8 / d_conv 4 / expand 2 (leave d_state unset; other values are rejected),
                  and the official `init_` (weights and biases of every Linear/Conv1d in the Mamba drawn from
                  uniform(-out_dim^-0.5, out_dim^-0.5), which also overwrites mamba_ssm's dt bias init).
      "paper"     Algorithm 1 of the paper: per expert `n_layers` x (RMSNorm pre-norm -> Mamba -> residual), with
                  d_state / d_conv / expand honoured (d_state unset: 16) and mamba_ssm's own initialisation.
    Router settings follow layers/st_moe.py (ST-MoE top-k gating); see `mixmamba.router.TopKRouter`.
    official_slot_offsets: True reproduces the official router, which offsets the slots of the n-th choice by the
      count of the (n-1)-th choice only (st-moe-pytorch before its fix for issue 13), so with top_k >= 3 a later
      choice can share a capacity slot with an earlier one; False offsets by all earlier choices. No effect at top_k 2.
    Frozen; `dataclasses.replace` builds a changed copy, checked again by __post_init__.
    """

    seq_len: int
    pred_len: int
    enc_in: int
    d_model: int = 64
    patch_len: int = 16
    stride: int = 8
    num_experts: int = 2
    top_k: int = 2
    d_state: int | None = None
    d_conv: int = 4
    expand: int = 2
    n_layers: int = 1
    dropout: float = 0.1
    use_norm: bool = True
    variant: str = "official"
    router_noise: float = 0.0
    router_threshold: float = 0.2
    capacity_factor_train: float = 1.25
    capacity_factor_eval: float = 2.0
    min_capacity: int = 8
    balance_loss_coef: float = 1e-2
    z_loss_coef: float = 1e-3
    official_slot_offsets: bool = True
    scan_backend: str = "auto"

    def __post_init__(self) -> None:
        for name in ("seq_len", "pred_len", "enc_in", "d_model", "patch_len", "stride", "num_experts", "n_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"MixMambaConfig.{name}={value!r}; set it to a positive integer")
        if self.variant not in VARIANTS:
            raise ValueError(f"MixMambaConfig.variant={self.variant!r}; use one of {', '.join(VARIANTS)}")
        if self.variant == "official":
            for name, used in OFFICIAL_EXPERT.items():
                given = getattr(self, name)
                if given is not None and given != used:
                    raise ValueError(
                        f"MixMambaConfig.{name}={given}: the official MixMamba always runs {name}={used}; "
                        f"set {name}={used} (or leave it unset) or use variant='paper'"
                    )
            # frozen: the one place a field is filled in, while the config is being built
            object.__setattr__(self, "d_state", OFFICIAL_EXPERT["d_state"])
            if self.n_layers != 1:
                raise ValueError(
                    f"MixMambaConfig.n_layers={self.n_layers}: the official variant has one Mamba per expert; "
                    "set n_layers=1 or use variant='paper'"
                )
        elif self.d_state is None:
            object.__setattr__(self, "d_state", PAPER_D_STATE)
        for name in ("d_state", "d_conv", "expand", "min_capacity"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"MixMambaConfig.{name}={value!r}; set it to a positive integer")
        if self.patch_len > self.seq_len + self.stride:
            raise ValueError(
                f"MixMambaConfig.patch_len={self.patch_len} is longer than seq_len + stride = "
                f"{self.seq_len + self.stride}; use a shorter patch_len or a longer seq_len"
            )
        if not 2 <= self.top_k <= self.num_experts:
            raise ValueError(
                f"MixMambaConfig.top_k={self.top_k} with num_experts={self.num_experts}; "
                "the ST-MoE router needs 2 <= top_k <= num_experts"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"MixMambaConfig.dropout={self.dropout}; set it in [0, 1)")
        if self.router_threshold <= 0.0:
            raise ValueError(f"MixMambaConfig.router_threshold={self.router_threshold}; set it > 0 (official: 0.2)")
        for name in ("router_noise", "balance_loss_coef", "z_loss_coef"):
            if getattr(self, name) < 0.0:
                raise ValueError(f"MixMambaConfig.{name}={getattr(self, name)}; set it >= 0")
        for name in ("capacity_factor_train", "capacity_factor_eval"):
            if getattr(self, name) <= 0.0:
                raise ValueError(f"MixMambaConfig.{name}={getattr(self, name)}; set it > 0 (ST-MoE uses >= 1)")
        if self.scan_backend not in scan_backend_names():
            raise ValueError(
                f"MixMambaConfig.scan_backend={self.scan_backend!r}; use one of {', '.join(scan_backend_names())}"
            )

    @property
    def patch_num(self) -> int:
        """Patches per channel (see `mixmamba.patching.patch_num`)."""
        return patching.patch_num(self.seq_len, self.patch_len, self.stride)
