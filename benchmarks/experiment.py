"""The resolved experiment: recipe + settings + dataset file + protocol + seed, resolved and validated once.

Every setting has one spelling everywhere (space files, recipes, `--set`, Tune configs, MLflow params, config files):
`model.<field>` for a field of the model's config dataclass, `train.<field>` for a TrainConfig field, and `seq_len`
for the lookback. The command that starts work resolves an `Experiment` once; trials, grid cells and refit seeds
receive it (it is frozen and picklable) and never resolve it again.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Mapping

from torch import nn

from benchmarks.data.files import DatasetFile
from benchmarks.data.protocol import DataProtocol
from benchmarks.errors import SettingError
from benchmarks.models.registry import PROTOCOL_FIELDS, did_you_mean, model_classes, model_config, recipe
from benchmarks.training.config import TRAIN_FIELDS, TrainConfig

SECTIONS = ("model", "train")
LOOKBACK = "seq_len"


@dataclass(frozen=True)
class Experiment:
    """One experiment with every setting filled in and checked: a model config, a TrainConfig, a dataset file and
    the protocol, and the seed. `recipe_source` says which reference script the defaults came from."""

    model: str
    model_config: Any
    train: TrainConfig
    data: DatasetFile
    protocol: DataProtocol
    seed: int = 2021
    device: str = "auto"
    recipe_source: str = ""

    @property
    def dataset(self) -> str:
        """The dataset's registry name (its canonical spelling)."""
        return self.data.name

    @property
    def seq_len(self) -> int:
        return self.protocol.seq_len

    @property
    def pred_len(self) -> int:
        return self.protocol.pred_len

    def model_config_dict(self) -> dict[str, Any]:
        """Every field of the model's config, protocol fields (seq_len, pred_len, enc_in) included, JSON-friendly."""
        return _plain(dataclasses.asdict(self.model_config))

    def settings(self) -> dict[str, Any]:
        """`model.<field>` and `train.<field>` -> value: every setting but the protocol's."""
        values = {f"model.{name}": value for name, value in self.model_config_dict().items()
                  if name not in PROTOCOL_FIELDS}
        values.update({f"train.{name}": getattr(self.train, name) for name in TRAIN_FIELDS})
        return values

    def data_settings(self) -> dict[str, Any]:
        """`data.<field>` -> value: the dataset and protocol a run records."""
        return {"data.dataset": self.dataset, "data.features": self.protocol.features,
                "data.target": self.protocol.target, "data.seq_len": self.seq_len,
                "data.pred_len": self.pred_len, "data.sha256": self.data.sha256}

    def config_hash(self) -> str:
        """12 hex digits identifying the model and training settings (not the seed, not the dataset)."""
        train = dataclasses.asdict(self.train)
        payload = json.dumps({"model": self.model, "model_config": self.model_config_dict(), "train": train},
                             sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]

    def with_settings(self, settings: Mapping[str, Any]) -> Experiment:
        """This experiment with `settings` (one spelling; `seq_len` changes the lookback) on top, checked."""
        if not settings:
            return self
        protocol = self.protocol
        if LOOKBACK in settings:
            protocol = dataclasses.replace(protocol, seq_len=_lookback(settings[LOOKBACK]))
        return _build(self.model, self.data, protocol, self.seed, self.device, self.recipe_source,
                      {**self.settings(), **{key: value for key, value in settings.items() if key != LOOKBACK}})

    def with_seed(self, seed: int) -> Experiment:
        return dataclasses.replace(self, seed=int(seed))

    def build_model(self) -> nn.Module:
        """A fresh model of this experiment's config (weights drawn from torch's current random state)."""
        _, model_class = model_classes(self.model)
        return model_class(self.model_config)


def resolve_experiment(model: str, data: DatasetFile, *, pred_len: int, seq_len: int = 96, features: str = "M",
                       target: str | None = None, seed: int = 2021, settings: Mapping[str, Any] | None = None,
                       device: str = "auto") -> Experiment:
    """The experiment of `model` on `data`: its recipe for (dataset, pred_len), then `settings` on top.

    Raises SettingError naming the setting (`model.x`, `train.x`, `seq_len`, `pred_len`) when a key is unknown or a
    value is rejected by the model's config or TrainConfig.
    """
    settings = dict(settings or {})
    if LOOKBACK in settings:
        seq_len = _lookback(settings.pop(LOOKBACK))
    protocol = DataProtocol(seq_len=seq_len, pred_len=pred_len, features=features,
                            target=target or data.spec.target)
    chosen = recipe(model, data.name, pred_len)
    defaults = {f"model.{key}": value for key, value in chosen.model.items()}
    defaults.update({f"train.{key}": value for key, value in chosen.train.items()})
    return _build(model, data, protocol, int(seed), device, chosen.source, {**defaults, **settings})


def split_settings(model: str, settings: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model fields, train fields) of one-spelling `settings`; SettingError for a key that is neither."""
    config_class, _ = model_classes(model)
    model_fields = [field.name for field in dataclasses.fields(config_class) if field.name not in PROTOCOL_FIELDS]
    model_values: dict[str, Any] = {}
    train_values: dict[str, Any] = {}
    for key, value in settings.items():
        section, _, name = key.partition(".")
        if section == "model" and name in model_fields:
            model_values[name] = value
        elif section == "train" and name in TRAIN_FIELDS:
            train_values[name] = value
        elif section == "model" and name in PROTOCOL_FIELDS:
            raise SettingError(f"{{setting}} comes from the data protocol; set {name} itself instead",
                               setting=key)
        else:
            known = [f"model.{field}" for field in model_fields] + [f"train.{field}" for field in TRAIN_FIELDS]
            raise SettingError(f"{{setting}} is not a {model} setting:{did_you_mean(key, known)} use model.<field> "
                               f"({', '.join(model_fields)}) or train.<field> ({', '.join(TRAIN_FIELDS)})",
                               setting=key)
    return model_values, train_values


def _build(model: str, data: DatasetFile, protocol: DataProtocol, seed: int, device: str, source: str,
           settings: Mapping[str, Any]) -> Experiment:
    model_values, train_values = split_settings(model, settings)
    try:
        train = TrainConfig(**train_values)
    except TypeError as error:
        raise SettingError(f"{{setting}}: {error}", setting="train") from None
    enc_in = 1 if protocol.features == "S" else data.n_channels
    config = model_config(model, protocol.seq_len, protocol.pred_len, enc_in, model_values)
    return Experiment(model=model, model_config=config, train=train, data=data, protocol=protocol, seed=seed,
                      device=device, recipe_source=source)


def _lookback(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) and not (isinstance(value, float) and value.is_integer()):
        raise SettingError(f"{{setting}}={value!r} must be a positive integer", setting=LOOKBACK)
    if int(value) < 1:
        raise SettingError(f"{{setting}}={value!r} must be a positive integer", setting=LOOKBACK)
    return int(value)


def _plain(value: Any) -> Any:
    """JSON-friendly copy: tuples become lists, anything unusual its string."""
    return json.loads(json.dumps(value, default=str))
