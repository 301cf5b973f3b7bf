"""Baseline forecasters judged against MixMamba: PatchTST, iTransformer and DLinear."""
from baselines.dlinear import DLinear, DLinearConfig
from baselines.itransformer import ITransformer, ITransformerConfig
from baselines.patchtst import PatchTST, PatchTSTConfig

__all__ = ["DLinear", "DLinearConfig", "ITransformer", "ITransformerConfig", "PatchTST", "PatchTSTConfig"]
