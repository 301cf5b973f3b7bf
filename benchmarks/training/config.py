"""TrainConfig: how a model is trained, every value checked (and numeric text converted) once, when it is built."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields
from typing import Any

from benchmarks.errors import SettingError

OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("type1", "cosine", "constant")
LOSSES = ("mse", "mae")
VAL_METRICS = ("loss", "mse", "mae")
_POSITIVE_INTS = ("epochs", "batch_size", "patience")
_OPTIONAL_POSITIVE_INTS = ("limit_train_batches", "limit_eval_batches")
_CHOICES = {"optimizer": OPTIMIZERS, "lradj": SCHEDULES, "loss": LOSSES, "val_metric": VAL_METRICS}


@dataclass(frozen=True)
class TrainConfig:
    """How a model is trained. Defaults are Time-Series-Library run.py's; recipes override them per dataset.

    lradj: "type1" halves the rate after every epoch from the second on (TSLib adjust_learning_rate),
      "cosine" follows lr/2 * (1 + cos(pi * epoch / epochs)), "constant" keeps it.
    loss: the forecast loss ("mse" or "mae"); the model's auxiliary loss is always added to it in training,
      validation (early stopping) uses the forecast loss alone, as TSLib's vali().
    val_metric: what validation loss means for early stopping, the kept checkpoint and a search's ranking: "loss"
      (the forecast loss, TSLib), "mse" or "mae". Fixing it lets runs trained with different losses be compared.
    bf16: bfloat16 autocast for the forward passes; the loss, optimiser and weights stay float32.
    compile: torch.compile the model (static shapes): one compilation for training and one for evaluation; each
      pass's last, partial batch runs uncompiled instead of triggering a recompilation.
    limit_train_batches / limit_eval_batches: cap the batches per training epoch / per validation and test pass
      (smoke tests and benchmarks; None runs every window).
    """

    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-4
    optimizer: str = "adam"
    weight_decay: float = 0.0
    lradj: str = "type1"
    patience: int = 3
    loss: str = "mse"
    val_metric: str = "loss"
    bf16: bool = False
    compile: bool = False
    limit_train_batches: int | None = None
    limit_eval_batches: int | None = None

    def __post_init__(self) -> None:
        for name in TRAIN_FIELDS:
            object.__setattr__(self, name, _checked(name, getattr(self, name)))

    @property
    def watched_metric(self) -> str:
        """The validation metric early stopping watches: "mse" or "mae"."""
        return self.loss if self.val_metric == "loss" else self.val_metric


TRAIN_FIELDS = tuple(field.name for field in fields(TrainConfig))


def _checked(name: str, value: Any) -> Any:
    """`value` as TrainConfig.`name` takes it (numbers from text or numpy included), or SettingError."""
    try:
        if name in _POSITIVE_INTS or name in _OPTIONAL_POSITIVE_INTS:
            if value is None and name in _OPTIONAL_POSITIVE_INTS:
                return None
            if isinstance(value, bool) or int(value) != float(value) or int(value) < 1:
                raise ValueError
            return int(value)
        if name in ("learning_rate", "weight_decay"):
            if isinstance(value, bool) or not isinstance(value, (numbers.Real, str)):
                raise ValueError
            number = float(value)
            if not math.isfinite(number) or number < 0 or (name == "learning_rate" and number == 0):
                raise ValueError
            return number
        if name in ("bf16", "compile"):
            if not isinstance(value, (bool, numbers.Integral)) or value not in (0, 1):
                raise ValueError
            return bool(value)
        if value not in _CHOICES[name]:
            raise ValueError
        return str(value)
    except (TypeError, ValueError):
        expected = {
            "learning_rate": "a positive number", "weight_decay": "a number >= 0", "bf16": "true or false",
            "compile": "true or false", **{key: " or ".join(choices) for key, choices in _CHOICES.items()},
            **dict.fromkeys(_POSITIVE_INTS, "a positive integer"),
            **dict.fromkeys(_OPTIONAL_POSITIVE_INTS, "a positive integer or null"),
        }[name]
        raise SettingError(f"{{setting}}={value!r} is invalid; set it to {expected}", setting=f"train.{name}") \
            from None
