"""The model registry: model names -> (config class, model class), building a model from settings, and each model's
per-dataset recipe (reference-script model and training settings) read from benchmarks/models/recipes.yaml.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import numbers
import typing
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from benchmarks.errors import SettingError

MODEL_NAMES = ("mixmamba", "patchtst", "itransformer", "dlinear")
MODEL_LABELS = {"mixmamba": "MixMamba", "itransformer": "iTransformer", "patchtst": "PatchTST", "dlinear": "DLinear"}

# name -> (module, config class, model class); imported on first use so the baselines work without mixmamba
_CLASS_PATHS: dict[str, tuple[str, str, str]] = {
    "mixmamba": ("mixmamba", "MixMambaConfig", "MixMamba"),
    "patchtst": ("baselines", "PatchTSTConfig", "PatchTST"),
    "itransformer": ("baselines", "ITransformerConfig", "ITransformer"),
    "dlinear": ("baselines", "DLinearConfig", "DLinear"),
}

# set by the data protocol, passed to build_model as arguments rather than overrides
PROTOCOL_FIELDS = ("seq_len", "pred_len", "enc_in")

RECIPES_PATH = Path(__file__).with_name("recipes.yaml")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A model's reference settings for one dataset and horizon.

    model: config overrides for build_model; train: epochs, batch_size, learning_rate, patience, lradj, loss,
    optimizer; seq_len: the lookback the reference script uses; source: the script these settings come from.
    """

    model: dict[str, Any]
    train: dict[str, Any]
    seq_len: int = 96
    source: str = ""


def model_label(model: str) -> str:
    """The display name of a registry model ("patchtst" -> "PatchTST"); unknown names are returned unchanged."""
    return MODEL_LABELS.get(model, model)


def did_you_mean(value: str, choices: typing.Iterable[str]) -> str:
    """' did you mean X?' for the closest choice (ignoring case), or ''."""
    by_lower = {choice.lower(): choice for choice in choices}
    match = difflib.get_close_matches(str(value).lower(), list(by_lower), n=1)
    return f" did you mean {by_lower[match[0]]!r}?" if match else ""


def _check_model_name(name: str) -> None:
    if name not in MODEL_NAMES:
        raise SettingError(
            f"{{setting}} {name!r} is not a registered model:{did_you_mean(name, MODEL_NAMES)} choose one of "
            f"{', '.join(MODEL_NAMES)}", setting="model"
        )


def model_classes(name: str) -> tuple[type, type[nn.Module]]:
    """(config class, model class) of a registered model; imports its package on first use (ImportError if absent)."""
    _check_model_name(name)
    module_name, config_name, model_name = _CLASS_PATHS[name]
    module = importlib.import_module(module_name)
    if not (hasattr(module, config_name) and hasattr(module, model_name)):
        raise ImportError(f"package {module_name!r} does not define {config_name} and {model_name} yet")
    return getattr(module, config_name), getattr(module, model_name)


def _coerce(name: str, key: str, value: Any, annotation: Any) -> Any:
    """Return value as the field's plain type (numpy scalars from search libraries included), or raise SettingError."""
    if annotation is bool:
        if isinstance(value, (bool, numbers.Integral)) and value in (0, 1):
            return bool(value)
    elif annotation is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
    elif annotation is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return float(value)
    elif annotation is str:
        if isinstance(value, str):
            return value
    else:
        return value  # richer annotations are left to the config's own validation
    expected = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[annotation]
    raise SettingError(f"{{setting}}={value!r} must be {expected}", setting=f"model.{key}")


def model_config(name: str, seq_len: int, pred_len: int, enc_in: int, overrides: dict[str, Any] | None = None) -> Any:
    """The validated config dataclass of model `name`: its defaults updated by `overrides` (e.g. a recipe's model).

    Raises SettingError for an unknown model, an unknown or protocol key in overrides, or a value the config rejects.
    """
    config_class, _ = model_classes(name)
    overrides = dict(overrides or {})
    hints = typing.get_type_hints(config_class)
    settable = [field.name for field in dataclasses.fields(config_class) if field.name not in PROTOCOL_FIELDS]
    values: dict[str, Any] = {}
    for key, value in overrides.items():
        if key in PROTOCOL_FIELDS:
            raise SettingError(f"{{setting}} comes from the data protocol; set {key} itself", setting=f"model.{key}")
        if key not in settable:
            raise SettingError(
                f"{{setting}} is not a {name} setting:{did_you_mean(key, settable)} valid keys are "
                f"{', '.join(settable)}", setting=f"model.{key}")
        values[key] = _coerce(name, key, value, hints[key])
    try:
        return config_class(seq_len=seq_len, pred_len=pred_len, enc_in=enc_in, **values)
    except (ValueError, TypeError) as error:
        raise SettingError(f"bad {name} {{setting}}: {error}", setting="model") from None


def build_model(
    name: str, seq_len: int, pred_len: int, enc_in: int, overrides: dict[str, Any] | None = None
) -> tuple[nn.Module, Any]:
    """Build model `name` for (seq_len, pred_len, enc_in) from its config defaults plus `overrides`.

    Returns (model, config). Typical use: `build_model(name, 96, 96, 21, recipe(name, "weather", 96).model)`.
    """
    config = model_config(name, seq_len, pred_len, enc_in, overrides)
    _, model_class = model_classes(name)
    return model_class(config), config


_ENTRY_KEYS = {"source", "seq_len", "model", "train", "horizons"}


@functools.lru_cache(maxsize=1)
def _load_recipes() -> dict[str, Any]:
    """Parse recipes.yaml once, checking its shape so a misspelt key cannot silently drop settings."""
    with RECIPES_PATH.open() as handle:
        data = yaml.safe_load(handle)
    if set(data["models"]) != set(MODEL_NAMES):
        raise ValueError(f"{RECIPES_PATH} must have an entry for each of {MODEL_NAMES}, has {sorted(data['models'])}")
    for model_name, section in data["models"].items():
        unknown = set(section) - {"defaults", "datasets"}
        if unknown:
            raise ValueError(f"{RECIPES_PATH}: models.{model_name} has unknown keys {sorted(unknown)}")
        for dataset, entry in {"defaults": section.get("defaults", {}), **section.get("datasets", {})}.items():
            if dataset != "defaults" and "source" not in entry:
                raise ValueError(f"{RECIPES_PATH}: models.{model_name}.datasets.{dataset} needs a source")
            unknown = set(entry) - _ENTRY_KEYS
            for horizon in entry.get("horizons", {}).values():
                unknown |= set(horizon) - {"model", "train"}
            if unknown:
                raise ValueError(f"{RECIPES_PATH}: models.{model_name}.{dataset} has unknown keys {sorted(unknown)}")
    return data


def recipe_datasets(name: str) -> tuple[str, ...]:
    """The datasets recipes.yaml has a reference recipe for, for model `name`."""
    _check_model_name(name)
    return tuple(_load_recipes()["models"][name].get("datasets", {}))


def recipe(name: str, dataset: str, pred_len: int) -> Recipe:
    """The reference settings of model `name` on `dataset` (its registry spelling) at horizon `pred_len`.

    A dataset without a reference script gets the model's defaults alone; Recipe.source says which applied.
    """
    _check_model_name(name)
    if isinstance(pred_len, bool) or not isinstance(pred_len, numbers.Integral) or pred_len < 1:
        raise SettingError(f"{{setting}} must be a positive integer, got {pred_len!r}", setting="pred_len")
    data = _load_recipes()
    section = data["models"][name]
    datasets = section.get("datasets", {})
    entry = datasets.get(dataset, {"source": f"no reference script for {name} on {dataset}: defaults"})
    horizon = entry.get("horizons", {}).get(int(pred_len), {})
    defaults = section.get("defaults", {})
    model: dict[str, Any] = {}
    train: dict[str, Any] = {}
    for layer in (data["defaults"], defaults, entry, horizon):
        model.update(layer.get("model", {}))
        train.update(layer.get("train", {}))
    return Recipe(
        model=model,
        train=train,
        seq_len=int(entry.get("seq_len", data["defaults"]["seq_len"])),
        source=str(entry["source"]),
    )
