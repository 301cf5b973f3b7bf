"""MixMamba, a mixture of Mamba-1 experts for time-series forecasting (Alkilane, He & Lee, 2024), in plain PyTorch.

Imports nothing but torch; mamba_ssm (CUDA selective scan) is used when installed and the inputs are on a GPU.
"""
from mixmamba.config import MixMambaConfig
from mixmamba.experts import MambaExperts, StackedMamba
from mixmamba.loss import forecast_loss
from mixmamba.mamba import Mamba
from mixmamba.model import MixMamba
from mixmamba.moe import MixtureOfMambaExperts, MoEOutput
from mixmamba.router import Routing, RoutingStats, TopKRouter
from mixmamba.scan import register_scan_backend, resolve_scan_backend, scan_backend_names, selective_scan

__all__ = [
    "MixMamba",
    "MixMambaConfig",
    "MixtureOfMambaExperts",
    "MoEOutput",
    "MambaExperts",
    "StackedMamba",
    "Mamba",
    "TopKRouter",
    "Routing",
    "RoutingStats",
    "selective_scan",
    "register_scan_backend",
    "resolve_scan_backend",
    "scan_backend_names",
    "forecast_loss",
]
