"""Models as plugins: every forecaster, the four built-ins included, is a `ModelPlugin` found through the Python entry
point group `mixbench.models`, so a model in its own package joins train, search, benchmark and tables once installed.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from benchmarks.errors import SettingError

ENTRY_POINT_GROUP = "mixbench.models"
BUILTIN_MODELS = ("mixmamba", "patchtst", "itransformer", "dlinear")
PROTOCOL_FIELDS = ("seq_len", "pred_len", "enc_in")   # set by the data protocol, first fields of every model config
RECIPE_KEYS = {"defaults", "datasets"}
RECIPE_ENTRY_KEYS = {"source", "seq_len", "model", "train", "horizons"}


@dataclass(frozen=True)
class ModelPlugin:
    """What an entry point of the `mixbench.models` group names (itself, or a function without arguments returning
    it, which lets a package defer heavy imports until the model is used).

    config_class: a dataclass whose first fields are seq_len, pred_len, enc_in (its `__post_init__` checks values);
    model_class: an nn.Module built as `model_class(config)`, `forward(x, x_mark) -> (forecast, aux_loss)` with x
    (B, seq_len, enc_in), x_mark (B, seq_len, F) or None, forecast (B, pred_len, enc_in), aux_loss a 0-dim tensor;
    label: the model's column in tables (default: the name); recipe: the layout of a `models.<name>` section of
    benchmarks/models/recipes.yaml (`defaults:` and `datasets:`, each with model/train/seq_len); space: a search-space
    YAML file (`model:` / `train:` sections) used by `mixbench search` when no `--space` is given;
    member_fields: config fields that may differ between the members of one fused training array because they only
    set the rates of the model's nn.Dropout modules (a fused array gives each member its own rates); every other
    field must be equal within an array.
    """

    name: str
    config_class: type
    model_class: type[nn.Module]
    label: str = ""
    recipe: Mapping[str, Any] | None = None
    space: Path | str | None = None
    member_fields: tuple[str, ...] = ()

    @property
    def display_name(self) -> str:
        return self.label or self.name


def installed_model_names() -> tuple[str, ...]:
    """Names of the installed models, read from entry-point metadata without importing any: built-ins first."""
    names = {entry.name for entry in _entry_points()}
    return tuple(name for name in BUILTIN_MODELS if name in names) + tuple(sorted(names - set(BUILTIN_MODELS)))


@functools.cache
def load_plugin(name: str) -> ModelPlugin:
    """The checked plugin of installed model `name`; a plugin that fails to import or describes itself wrongly is a
    one-line SettingError naming it and its package."""
    entries = [entry for entry in _entry_points() if entry.name == name]
    if not entries:
        raise SettingError(f"{{setting}} {name!r} is not an installed model", setting="model")
    entry = entries[0]
    where = f"model plugin {name!r} ({entry.value}{_package(entry)})"
    if len({other.value for other in entries}) > 1:
        raise SettingError(f"{where}: {len(entries)} installed packages declare a model {name!r} "
                           f"({', '.join(other.value for other in entries)}); uninstall one", setting="model")
    try:
        loaded = entry.load()
        plugin = loaded() if callable(loaded) and not isinstance(loaded, ModelPlugin) else loaded
    except Exception as error:  # noqa: BLE001 - a third-party package's failure is that plugin being broken
        reason = " ".join(f"{type(error).__name__}: {error}".split())[:300]
        raise SettingError(f"{where} cannot be loaded ({reason}); fix or uninstall that package",
                           setting="model") from None
    problem = _problem(name, plugin)
    if problem:
        raise SettingError(f"{where} is broken: {problem}; fix or uninstall that package", setting="model")
    return plugin


def check_recipe(recipe: Mapping[str, Any], where: str) -> None:
    """ValueError naming `where` when a recipe section has unknown keys (a misspelt key must not drop settings)."""
    unknown = set(recipe) - RECIPE_KEYS
    if unknown:
        raise ValueError(f"{where} has unknown keys {sorted(unknown)}; use defaults and datasets")
    for dataset, entry in {"defaults": recipe.get("defaults") or {}, **(recipe.get("datasets") or {})}.items():
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where}.{dataset} must be a mapping")
        unknown = set(entry) - RECIPE_ENTRY_KEYS
        for horizon in (entry.get("horizons") or {}).values():
            unknown |= set(horizon) - {"model", "train"}
        if unknown:
            raise ValueError(f"{where}.{dataset} has unknown keys {sorted(unknown)}")


def _problem(name: str, plugin: Any) -> str:
    """What is wrong with a loaded plugin object, or ''."""
    if not isinstance(plugin, ModelPlugin):
        return f"the entry point gives {type(plugin).__name__}, not a benchmarks.models.plugins.ModelPlugin"
    if plugin.name != name:
        return f"it calls itself {plugin.name!r} but is installed as {name!r}"
    config_class = plugin.config_class
    if not (isinstance(config_class, type) and dataclasses.is_dataclass(config_class)):
        return f"config_class {config_class!r} is not a dataclass"
    first = tuple(field.name for field in dataclasses.fields(config_class))[:3]
    if first != PROTOCOL_FIELDS:
        return f"config_class {config_class.__name__}'s first fields are {first}, not {PROTOCOL_FIELDS}"
    if not (isinstance(plugin.model_class, type) and issubclass(plugin.model_class, nn.Module)):
        return f"model_class {plugin.model_class!r} is not a torch.nn.Module subclass"
    if plugin.recipe is not None:
        try:
            check_recipe(plugin.recipe, "its recipe")
        except ValueError as error:
            return str(error)
    unknown = set(plugin.member_fields) - {field.name for field in dataclasses.fields(config_class)}
    if unknown:
        return f"member_fields {sorted(unknown)} are not fields of {config_class.__name__}"
    if plugin.space is not None and not Path(plugin.space).is_file():
        return f"its space file {plugin.space} does not exist"
    return ""


def _entry_points() -> tuple[importlib.metadata.EntryPoint, ...]:
    return tuple(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def _package(entry: importlib.metadata.EntryPoint) -> str:
    dist = getattr(entry, "dist", None)
    return f", package {dist.name}" if dist is not None else ""

