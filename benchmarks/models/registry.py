"""The model registry: installed model names -> their plugin (config class, model class, label, recipe, space),
building a model from settings, and each model's per-dataset recipe: the built-ins' reference-script settings in
benchmarks/models/recipes.yaml, a plugin's in its own `recipe`.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import numbers
import typing
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from benchmarks.errors import SettingError
from benchmarks.models.plugins import (
    BUILTIN_MODELS,
    PROTOCOL_FIELDS,
    ModelPlugin,
    check_recipe,
    installed_model_names,
    load_plugin,
)

# read once per process from the entry-point metadata (no model is imported for it)
MODEL_NAMES = installed_model_names()

RECIPES_PATH = Path(__file__).with_name("recipes.yaml")
OWN_MODELS_DOC = "docs/own-data-and-models.md"


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
    """The display name of a model ("patchtst" -> "PatchTST"); a name not installed (or broken) is returned as is, so
    tables of old runs never fail on it."""
    try:
        return model_plugin(model).display_name
    except SettingError:
        return model


def did_you_mean(value: str, choices: typing.Iterable[str]) -> str:
    """' did you mean X?' for the closest choice (ignoring case), or ''."""
    by_lower = {choice.lower(): choice for choice in choices}
    match = difflib.get_close_matches(str(value).lower(), list(by_lower), n=1)
    return f" did you mean {by_lower[match[0]]!r}?" if match else ""


def model_plugin(name: str) -> ModelPlugin:
    """The checked plugin of installed model `name`; SettingError for a name not installed or a broken plugin."""
    if name not in MODEL_NAMES:
        missing = [builtin for builtin in BUILTIN_MODELS if builtin not in MODEL_NAMES]
        hint = ("; the built-in models are missing too: reinstall mixbench (`pip install -e .`) so that its "
                "entry points are registered" if missing else f"; to add your own, see {OWN_MODELS_DOC}")
        raise SettingError(
            f"{{setting}} {name!r} is not an installed model:{did_you_mean(name, MODEL_NAMES)} choose one of "
            f"{', '.join(MODEL_NAMES) or '(none)'}{hint}", setting="model")
    return load_plugin(name)


def model_classes(name: str) -> tuple[type, type[nn.Module]]:
    """(config class, model class) of an installed model; loads its plugin on first use."""
    plugin = model_plugin(name)
    return plugin.config_class, plugin.model_class


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


@functools.lru_cache(maxsize=1)
def _load_recipes() -> dict[str, Any]:
    """Parse recipes.yaml once, checking its shape so a misspelt key cannot silently drop settings."""
    with RECIPES_PATH.open() as handle:
        data = yaml.safe_load(handle)
    if set(data["models"]) != set(BUILTIN_MODELS):
        raise ValueError(f"{RECIPES_PATH} must have an entry for each of {BUILTIN_MODELS}, "
                         f"has {sorted(data['models'])}")
    for model_name, section in data["models"].items():
        check_recipe(section, f"{RECIPES_PATH}: models.{model_name}")
        for dataset, entry in section.get("datasets", {}).items():
            if "source" not in entry:
                raise ValueError(f"{RECIPES_PATH}: models.{model_name}.datasets.{dataset} needs a source")
    return data


def builtin_recipe(name: str) -> dict[str, Any]:
    """The recipes.yaml section of built-in model `name`: what its plugin carries as `recipe`."""
    return _load_recipes()["models"][name]


def recipe_datasets(name: str) -> tuple[str, ...]:
    """The datasets model `name`'s recipe has a reference entry for."""
    return tuple((model_plugin(name).recipe or {}).get("datasets") or {})


def recipe(name: str, dataset: str, pred_len: int) -> Recipe:
    """The reference settings of model `name` on `dataset` (its registry spelling) at horizon `pred_len`.

    Layers, later winning: recipes.yaml's `defaults` (TSLib's run.py), the model's recipe `defaults`, its entry for
    the dataset, that entry's horizon. A dataset without an entry gets the defaults alone; Recipe.source says which.
    """
    section = model_plugin(name).recipe or {}
    if isinstance(pred_len, bool) or not isinstance(pred_len, numbers.Integral) or pred_len < 1:
        raise SettingError(f"{{setting}} must be a positive integer, got {pred_len!r}", setting="pred_len")
    data = _load_recipes()
    datasets = section.get("datasets") or {}
    entry = datasets.get(dataset, {"source": f"no reference script for {name} on {dataset}: defaults"})
    horizon = (entry.get("horizons") or {}).get(int(pred_len), {})
    defaults = section.get("defaults") or {}
    model: dict[str, Any] = {}
    train: dict[str, Any] = {}
    for layer in (data["defaults"], defaults, entry, horizon):
        model.update(layer.get("model") or {})
        train.update(layer.get("train") or {})
    seq_len = entry.get("seq_len", defaults.get("seq_len", data["defaults"]["seq_len"]))
    return Recipe(model=model, train=train, seq_len=int(seq_len), source=str(entry.get("source", "")))
