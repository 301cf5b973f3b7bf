"""The four built-in models as plugins, declared in pyproject.toml's `mixbench.models` entry points like any other.

Each is a function so that using the baselines never imports `mixmamba` (and the reverse).
"""
from __future__ import annotations

import importlib

from benchmarks.models.plugins import ModelPlugin
from benchmarks.models.registry import builtin_recipe


def mixmamba() -> ModelPlugin:
    # MixMamba's dropout feeds only nn.Dropout modules; the transformers' also feeds their attention kernel.
    return _plugin("mixmamba", "MixMamba", "mixmamba", "MixMambaConfig", "MixMamba", member_fields=("dropout",))


def patchtst() -> ModelPlugin:
    return _plugin("patchtst", "PatchTST", "baselines", "PatchTSTConfig", "PatchTST")


def itransformer() -> ModelPlugin:
    return _plugin("itransformer", "iTransformer", "baselines", "ITransformerConfig", "ITransformer")


def dlinear() -> ModelPlugin:
    return _plugin("dlinear", "DLinear", "baselines", "DLinearConfig", "DLinear")


def _plugin(name: str, label: str, module_name: str, config_name: str, model_name: str,
            member_fields: tuple[str, ...] = ()) -> ModelPlugin:
    module = importlib.import_module(module_name)
    return ModelPlugin(name=name, config_class=getattr(module, config_name), model_class=getattr(module, model_name),
                       label=label, recipe=builtin_recipe(name), member_fields=member_fields)
