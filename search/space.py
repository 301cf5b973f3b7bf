"""Search spaces as data: parse and check a space YAML, and propose configs from it as an Optuna define-by-run function.

A space file has a `model:` and a `train:` section mapping setting names (fields of the model's config dataclass or
of TrainConfig; `seq_len` under `model:` searches the lookback) to one of:
  a plain value                      fixed for every trial, e.g. `e_layers: 1`
  {choices: [a, b, ...]}             categorical; `divides: NAME` keeps the choices that divide NAME's value
  {low: L, high: H}                  int or float (the setting's type), optional `step: S` or `log: true`;
                                     L and H may name an earlier parameter, e.g. `top_k: {low: 2, high: num_experts}`
Any of the last two may carry `when: {NAME: value or [values]}` (proposed only then) and `otherwise: V` (the value
used when the condition does not hold; without it the recipe's value stays). Parameters are proposed in file order,
so a bound, `divides` or `when` can only name a parameter written above it.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml

from benchmarks.errors import SettingError, SpaceError
from benchmarks.experiment import Experiment
from benchmarks.models.registry import model_classes, model_plugin
from benchmarks.training.config import TrainConfig

SPACES_DIR = Path(__file__).with_name("spaces")
SECTIONS = ("model", "train")
# Settings the search itself owns (what sets each): the space may not search or fix them.
_OWNED_BY_FLAGS = {
    "pred_len": "pred_len",
    "enc_in": "the dataset (its channel count)",
    "epochs": "epochs (ASHA's max_t)",
    "limit_train_batches": "limit_train_batches",
    "limit_eval_batches": "limit_eval_batches",
}
_RANGE_KEYS = {"low", "high", "step", "log", "when", "otherwise"}
_CHOICE_KEYS = {"choices", "divides", "when", "otherwise"}
# A proposal's "this parameter is not set" marker; never stored (Params are pickled with the searcher).
_UNSET = object()
# Enumerating an int range to check `divides` is cheap up to this many values.
_MAX_ENUMERATED = 100_000


@dataclass(frozen=True)
class Param:
    """One searched or fixed setting. `section` is model or train, except the lookback (`seq_len`), section data."""

    name: str
    section: str
    kind: str                                   # "fixed", "categorical", "int" or "float"
    value: Any = None                           # fixed only
    choices: tuple[Any, ...] = ()               # categorical only
    divides: str | None = None                  # categorical: keep choices that divide this parameter's value
    low: float | int | str | None = None        # int/float: a number or an earlier parameter's name
    high: float | int | str | None = None
    step: float | int | None = None
    log: bool = False
    when: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    has_otherwise: bool = False                 # whether `otherwise` applies when `when` fails (else: not set)
    otherwise: Any = None

    @property
    def path(self) -> str:
        """Its one spelling, the key in a proposed Tune config: `model.<name>`, `train.<name>`, or `seq_len`."""
        return self.name if self.section == "data" else f"{self.section}.{self.name}"

    def describe(self) -> str:
        """A short text of the parameter's domain, e.g. `int [2, num_experts] step 2` (logged on the parent run)."""
        if self.kind == "fixed":
            text = f"fixed {self.value!r}"
        elif self.kind == "categorical":
            text = f"choices {list(self.choices)}" + (f" dividing {self.divides}" if self.divides else "")
        else:
            text = f"{self.kind} [{self.low}, {self.high}]" + (f" step {self.step}" if self.step else "")
            text += " log" if self.log else ""
        if self.when:
            conditions = ", ".join(f"{name} in {list(values)}" for name, values in self.when.items())
            text += f" when {conditions}"
            if self.has_otherwise:
                text += f" otherwise {self.otherwise!r}"
        return text


@dataclass(frozen=True)
class ProposedConfig:
    """What one trial trains: the lookback (None: the search's default) and model / training overrides."""

    seq_len: int | None
    model: dict[str, Any]
    train: dict[str, Any]

    def flat(self) -> dict[str, Any]:
        """`seq_len`, `model.<name>`, `train.<name>` -> value (for tables, MLflow params and the Optuna study)."""
        values: dict[str, Any] = {} if self.seq_len is None else {"seq_len": self.seq_len}
        values.update({f"model.{name}": value for name, value in self.model.items()})
        values.update({f"train.{name}": value for name, value in self.train.items()})
        return values


@dataclass(frozen=True)
class SearchSpace:
    """A parsed, checked space for one model; calling it with an Optuna trial proposes one config (define-by-run).

    Picklable (Ray Tune checkpoints the searcher, and with it this object, for `--resume`).
    """

    model: str
    path: str
    params: tuple[Param, ...]

    @property
    def source(self) -> str:
        """How errors name the space: `space file <path>`."""
        return f"space file {self.path}"

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        """Propose every parameter in order; returns {path: value} (Ray's OptunaSearch merges it into the config)."""
        values: dict[str, Any] = {}
        for param in self.params:
            values[param.name] = _propose(param, trial, values)
        return {param.path: values[param.name] for param in self.params if values[param.name] is not _UNSET}

    @property
    def searches_seq_len(self) -> bool:
        """True when the lookback is a parameter (the protocol tag then reads `-Lsearched`)."""
        return any(param.section == "data" for param in self.params)

    def propose(self, trial: optuna.Trial) -> ProposedConfig:
        """Propose one config directly (outside Ray Tune), e.g. to check the space before a search starts."""
        return self.decode(self(trial))

    def decode(self, config: dict[str, Any]) -> ProposedConfig:
        """The space's own settings from a Tune trial config (dropping the conditional names Optuna also used)."""
        seq_len = config.get("seq_len")
        return ProposedConfig(
            seq_len=None if seq_len is None else int(seq_len),
            model={p.name: config[p.path] for p in self.params if p.section == "model" and p.path in config},
            train={p.name: config[p.path] for p in self.params if p.section == "train" and p.path in config},
        )

    def describe(self) -> dict[str, str]:
        """`space.<section>.<name>` -> domain text, the flattened space logged as parent-run params."""
        return {f"space.{param.section}.{param.name}": param.describe() for param in self.params}

    def outer_distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        """For every searched parameter (by its `flat()` key), one distribution holding every value it can take.

        Used to rebuild an Optuna study from finished trials (dependent bounds vary per trial; these cover them).
        """
        distributions = {}
        by_name = {param.name: param for param in self.params}
        for param in self.params:
            key = param.name if param.section == "data" else f"{param.section}.{param.name}"
            if param.kind == "categorical":
                distributions[key] = optuna.distributions.CategoricalDistribution(list(param.choices))
            elif param.kind in ("int", "float"):
                low, high = _bound_extent(param.low, by_name)[0], _bound_extent(param.high, by_name)[1]
                # A bound naming another parameter shifts the step grid per trial; the outer range has none.
                dynamic = isinstance(param.low, str) or isinstance(param.high, str)
                if param.kind == "int":
                    distributions[key] = optuna.distributions.IntDistribution(
                        int(low), int(high), log=param.log, step=1 if dynamic else (param.step or 1))
                else:
                    distributions[key] = optuna.distributions.FloatDistribution(
                        low, high, log=param.log, step=None if dynamic else param.step)
        return distributions

    def with_seq_len_choices(self, choices: list[int]) -> SearchSpace:
        """This space with the lookback searched over `choices` first (`--search-seq-len`)."""
        if self.searches_seq_len:
            raise SpaceError(f"{self.source} already searches seq_len; drop {{setting}} or that entry",
                             setting="search_seq_len")
        if not choices or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in choices):
            raise SpaceError(f"{{setting}} {choices!r}: give positive integers, e.g. 96,192,336",
                             setting="search_seq_len")
        lookback = Param("seq_len", "data", "categorical", choices=tuple(choices))
        return dataclasses.replace(self, params=(lookback, *self.params))


EXPERIMENT_KEY = "experiment"  # a proposal's resolved Experiment, in its Tune config
INVALID_KEY = "invalid"        # why a proposal is no valid experiment (the trial fails with it)


@dataclass(frozen=True)
class BoundSpace:
    """A space bound to the search's base experiment, as Ray's OptunaSearch calls it (define-by-run): each proposal
    comes with its resolved, checked Experiment under EXPERIMENT_KEY (OptunaSearch merges the returned dict into the
    trial's config), so a trial never resolves its settings again. Picklable, like the space.
    """

    space: SearchSpace
    base: Experiment

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        values = self.space(trial)
        return {**values, **self.resolve(values)}

    def resolve(self, values: dict[str, Any]) -> dict[str, Any]:
        """{EXPERIMENT_KEY: the experiment of these proposed values} or {INVALID_KEY: why they make none}."""
        try:
            return {EXPERIMENT_KEY: self.base.with_settings(values)}
        except SettingError as error:
            return {INVALID_KEY: str(error)}

    def recipe_point(self) -> tuple[dict[str, Any], list[str]]:
        """Optuna's parameter values that propose the base experiment's (the recipe's) value of every searched
        setting, for Optuna to evaluate first, and the settings the space holds at another value than the recipe
        (fixed, or a condition's `otherwise`), as `name value (recipe: value)`.

        Raises SpaceError naming the first searched setting whose recipe value lies outside its domain.
        """
        recipe = {"seq_len": self.base.seq_len, **self.base.settings()}
        values: dict[str, Any] = {}
        point: dict[str, Any] = {}
        for param in self.space.params:
            if param.when and not all(values.get(name, _UNSET) in allowed for name, allowed in param.when.items()):
                values[param.name] = param.otherwise if param.has_otherwise else _UNSET
                continue
            if param.kind == "fixed":
                values[param.name] = param.value
                continue
            value = recipe[param.path]
            name, distribution = _distribution(param, values)
            if not in_distribution(distribution, value):
                raise SpaceError(f"{self.space.source}: the recipe's {param.path} {value!r} lies outside "
                                 f"{param.describe()}; widen it to start the search from the recipe")
            point[name] = values[param.name] = value
        proposal = self.resolve(self.space(optuna.trial.FixedTrial(point)))
        if INVALID_KEY in proposal:
            raise SpaceError(f"{self.space.source}: the recipe's values make no valid config here "
                             f"({proposal[INVALID_KEY]}); change the fixed settings of the space")
        made = proposal[EXPERIMENT_KEY]
        held = {"seq_len": made.seq_len, **made.settings()}
        return point, [f"{key} {held[key]!r} (recipe: {value!r})" for key, value in recipe.items() if held[key] != value]


def default_space_path(model: str) -> Path:
    """The space file of `model` when none is given: its plugin's own `space`, else search/spaces/<model>.yaml.

    A model with neither (a plugin that ships no space) raises SpaceError asking for one.
    """
    plugin = model_plugin(model)
    if plugin.space is not None:
        return Path(plugin.space)
    shipped = SPACES_DIR / f"{model}.yaml"
    if not shipped.is_file():
        raise SpaceError(f"model {model!r} ships no search space; write one (sections model: and train:, like "
                         f"{SPACES_DIR / 'dlinear.yaml'}) and pass it as {{setting}} FILE", setting="space")
    return shipped


def load_space(path: str | Path, model: str) -> SearchSpace:
    """Parse and check the space file at `path` for registry model `model`.

    Raises SpaceError (one line naming the file and the key) for bad YAML, an unknown section or setting (listing the
    valid ones), an empty range or choice list, low > high, a bound naming a later or unknown parameter, a
    constraint no value can satisfy, or a setting the search command owns (pred_len, epochs, batch limits).
    """
    path = Path(path)
    source = f"space file {path}"
    if not path.is_file():
        raise SpaceError(f"{source}: no such file; pass {{setting}} a YAML file like search/spaces/{model}.yaml",
                         setting="space")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "somewhere"
        raise SpaceError(f"{source} is not valid YAML ({where}: {getattr(error, 'problem', error)}); fix the syntax") \
            from None
    if not isinstance(data, dict) or not data:
        raise SpaceError(f"{source} must be a mapping with sections {' and/or '.join(SECTIONS)}; see {SPACES_DIR}")
    unknown = sorted(set(map(str, data)) - set(SECTIONS))
    if unknown:
        raise SpaceError(f"{source}: unknown section {unknown[0]!r}; valid sections are {', '.join(SECTIONS)}")

    config_class, _ = model_classes(model)
    types = {"model": typing.get_type_hints(config_class), "train": typing.get_type_hints(TrainConfig)}
    types["model"].pop("seq_len")
    params: list[Param] = []
    for section in SECTIONS:
        entries = data.get(section) or {}
        if not isinstance(entries, dict):
            raise SpaceError(f"{source}: {section} must map setting names to values or domains")
        valid = [name for name in types[section] if name not in _OWNED_BY_FLAGS]
        if section == "model":
            valid.insert(0, "seq_len")
        for name, raw in entries.items():
            key = f"{section}.{name}"
            if name in _OWNED_BY_FLAGS:
                raise SpaceError(f"{source}: {key} is set by {_OWNED_BY_FLAGS[name]}; remove it from the space")
            if name not in valid:
                raise SpaceError(f"{source}: {key} is not a {model if section == 'model' else 'training'} setting; "
                                 f"valid keys are {', '.join(valid)}")
            if any(param.name == name for param in params):
                raise SpaceError(f"{source}: {key} appears twice; keep one entry")
            annotation = int if name == "seq_len" else types[section][name]
            params.append(_parse_param(source, key, "data" if name == "seq_len" else section, name, raw, annotation,
                                       params))
    return SearchSpace(model=model, path=str(path), params=tuple(params))


def _parse_param(source: str, key: str, section: str, name: str, raw: Any, annotation: Any,
                 earlier: list[Param]) -> Param:
    """One entry of a space file as a Param, checked against the parameters above it."""
    where = f"{source}: {key}"
    if not isinstance(raw, dict):
        return Param(name, section, "fixed", value=_yaml_number(raw, annotation))
    by_name = {param.name: param for param in earlier}
    when = _parse_when(where, raw.get("when"), by_name)
    has_otherwise, otherwise = "otherwise" in raw, _yaml_number(raw.get("otherwise"), annotation)
    if has_otherwise and not when:
        raise SpaceError(f"{where}: `otherwise` needs a `when` condition; add one or drop `otherwise`")
    if "choices" in raw:
        _check_keys(where, raw, _CHOICE_KEYS)
        choices = raw["choices"]
        if not isinstance(choices, list) or not choices:
            raise SpaceError(f"{where}: choices must be a non-empty list, e.g. choices: [16, 32, 64]")
        if any(isinstance(choice, (dict, list)) for choice in choices):
            raise SpaceError(f"{where}: choices must be plain values (numbers, text, true/false, null)")
        choices = [_yaml_number(choice, annotation) for choice in choices]
        if len(set(map(repr, choices))) != len(choices):
            raise SpaceError(f"{where}: choices repeat a value; list each once")
        divides = raw.get("divides")
        if divides is not None:
            _check_divides(where, divides, choices, by_name)
        return Param(name, section, "categorical", choices=tuple(choices), divides=divides, when=when,
                     has_otherwise=has_otherwise, otherwise=otherwise)
    if "low" in raw or "high" in raw:
        _check_keys(where, raw, _RANGE_KEYS)
        kind = _range_kind(where, annotation)
        low, high = (_bound(where, which, raw.get(which), kind, by_name) for which in ("low", "high"))
        step, log = raw.get("step"), raw.get("log", False)
        if not isinstance(log, bool):
            raise SpaceError(f"{where}: log must be true or false")
        if step is not None:
            if isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0 or (
                    kind == "int" and not isinstance(step, int)):
                kind_name = "integer" if kind == "int" else "number"
                raise SpaceError(f"{where}: step {step!r} must be a positive {kind_name}")
            if log:
                raise SpaceError(f"{where}: Optuna cannot combine step and log; drop one")
        param = Param(name, section, kind, low=low, high=high, step=step, log=log, when=when,
                      has_otherwise=has_otherwise, otherwise=otherwise)
        _check_range(where, param, by_name)
        return param
    raise SpaceError(f"{where}: give a value, {{choices: [...]}} or {{low: ..., high: ...}}")


def _yaml_number(value: Any, annotation: Any) -> Any:
    """YAML reads `1e-3` (no dot) as text; for a numeric setting take such text as the number it spells."""
    options = set(typing.get_args(annotation)) - {type(None)} or {annotation}
    if not isinstance(value, str) or not options & {int, float}:
        return value
    try:
        number = float(value)
    except ValueError:
        return value
    return int(number) if options == {int} and number.is_integer() else number


def _check_keys(where: str, raw: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(map(str, raw)) - allowed)
    if unknown:
        raise SpaceError(f"{where}: unknown key {unknown[0]!r}; valid keys here are {', '.join(sorted(allowed))}")


def _range_kind(where: str, annotation: Any) -> str:
    """int or float from the setting's type (`int | None` counts as int); other types take choices."""
    options = set(typing.get_args(annotation)) - {type(None)} or {annotation}
    if options == {int}:
        return "int"
    if options == {float}:
        return "float"
    names = "/".join(sorted(getattr(option, "__name__", str(option)) for option in options))
    raise SpaceError(f"{where} is a {names} setting, not a number; use choices: [...]")


def _bound(where: str, which: str, value: Any, kind: str, by_name: dict[str, Param]) -> int | float | str:
    """A range bound: a number (YAML's `1e-3` text counts) or the name of an earlier numeric parameter."""
    if value is None:
        raise SpaceError(f"{where}: a range needs both low and high")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            if value not in by_name:
                raise SpaceError(f"{where}: {which} names {value!r}, which is not a parameter above it; "
                                 f"use a number or move {value!r} higher in the file") from None
            if _extent(by_name[value], by_name) is None:
                raise SpaceError(f"{where}: {which} names {value!r}, which is not always a number; "
                                 f"give {value!r} numeric values (and an `otherwise` if it has a `when`)")
            return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpaceError(f"{where}: {which} {value!r} must be a finite number or an earlier parameter's name")
    if kind == "int":
        if value != int(value):
            raise SpaceError(f"{where}: {which} {value!r} must be a whole number (the setting is an integer)")
        return int(value)
    return float(value)


def _extent(param: Param, by_name: dict[str, Param]) -> tuple[float, float] | None:
    """(smallest, largest) value a parameter can take, or None if it can be a non-number or be left unset."""
    if param.when and (not param.has_otherwise or not _is_number(param.otherwise)):
        return None
    candidates: list[Any] = [param.otherwise] if param.when else []
    if param.kind == "fixed":
        candidates.append(param.value)
    elif param.kind == "categorical":
        candidates.extend(param.choices)
    else:
        candidates.extend([_bound_extent(param.low, by_name)[0], _bound_extent(param.high, by_name)[1]])
    if not all(_is_number(candidate) for candidate in candidates):
        return None
    return min(candidates), max(candidates)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _bound_extent(bound: int | float | str | None, by_name: dict[str, Param]) -> tuple[float, float]:
    """(smallest, largest) value a bound can have: itself, or the extent of the parameter it names."""
    if isinstance(bound, str):
        extent = _extent(by_name[bound], by_name)
        assert extent is not None  # _bound accepts only names of always-numeric parameters
        return extent
    return float(bound), float(bound)


def _check_range(where: str, param: Param, by_name: dict[str, Param]) -> None:
    """The range must be non-empty for every value the parameters it names can take; log needs low > 0."""
    smallest_low, largest_low = _bound_extent(param.low, by_name)
    smallest_high, _ = _bound_extent(param.high, by_name)
    if not isinstance(param.low, str) and not isinstance(param.high, str):
        if param.low > param.high:
            raise SpaceError(f"{where}: low {param.low} > high {param.high} leaves an empty range; "
                             "make low <= high")
    elif param.low != param.high and largest_low > smallest_high:
        low = param.low if not isinstance(param.low, str) else f"{param.low} (up to {largest_low:g})"
        high = param.high if not isinstance(param.high, str) else f"{param.high} (as low as {smallest_high:g})"
        raise SpaceError(f"{where}: impossible constraint: low {low} can exceed high {high}; "
                         "narrow the ranges so low <= high always holds")
    if param.log and smallest_low <= 0:
        raise SpaceError(f"{where}: a log range needs low > 0 (low can be {smallest_low:g}); raise low or drop log")


def _parse_when(where: str, raw: Any, by_name: dict[str, Param]) -> dict[str, tuple[Any, ...]]:
    """`when: {name: value or [values]}` -> {name: allowed values}, naming only earlier parameters."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not raw:
        raise SpaceError(f"{where}: when must map an earlier parameter to its value(s), e.g. when: {{variant: paper}}")
    when = {}
    for name, allowed in raw.items():
        if name not in by_name:
            raise SpaceError(f"{where}: when names {name!r}, which is not a parameter above it; "
                             f"move {name!r} higher in the file")
        allowed = tuple(allowed) if isinstance(allowed, list) else (allowed,)
        referenced = by_name[name]
        possible = _possible_values(referenced)
        if possible is not None and not set(map(repr, allowed)) & set(map(repr, possible)):
            raise SpaceError(f"{where}: impossible constraint: {name} is never {list(allowed)!r} "
                             f"(it is one of {list(possible)!r}); fix the condition")
        when[name] = allowed
    return when


def _possible_values(param: Param) -> tuple[Any, ...] | None:
    """Every value of a fixed or categorical parameter (with its `otherwise`), or None for ranges."""
    if param.kind == "fixed":
        values: tuple[Any, ...] = (param.value,)
    elif param.kind == "categorical":
        values = param.choices
    else:
        return None
    return values + ((param.otherwise,) if param.when and param.has_otherwise else ())


def _check_divides(where: str, divides: Any, choices: list[Any], by_name: dict[str, Param]) -> None:
    """`divides: NAME`: integer choices, NAME an earlier integer parameter, and each of its values has a divisor."""
    if not isinstance(divides, str) or divides not in by_name:
        raise SpaceError(f"{where}: divides names {divides!r}, which is not a parameter above it; "
                         "move it higher in the file")
    if not all(isinstance(choice, int) and not isinstance(choice, bool) and choice > 0 for choice in choices):
        raise SpaceError(f"{where}: divides needs positive integer choices")
    referenced = by_name[divides]
    values = _possible_values(referenced)
    if values is None and referenced.kind == "int" and not referenced.when:
        low, high = _bound_extent(referenced.low, by_name)[0], _bound_extent(referenced.high, by_name)[1]
        # With a bound naming another parameter the grid moves with it, so every integer in the extent counts.
        step = 1 if isinstance(referenced.low, str) else (referenced.step or 1)
        if (high - low) / step <= _MAX_ENUMERATED:
            values = tuple(range(int(low), int(high) + 1, step))
    if values is None or not all(isinstance(value, int) and not isinstance(value, bool) for value in values):
        raise SpaceError(f"{where}: divides names {divides!r}, which must be an integer parameter with known values")
    for value in values:
        if not any(value % choice == 0 for choice in choices):
            raise SpaceError(f"{where}: impossible constraint: no choice in {choices} divides {divides}={value}; "
                             f"add a divisor of {value} or drop {value} from {divides}")


def _distribution(param: Param, values: dict[str, Any]) -> tuple[str, optuna.distributions.BaseDistribution]:
    """A searched parameter's Optuna name and distribution, given the values of the parameters above it."""
    if param.kind == "categorical":
        choices = list(param.choices)
        if param.divides is not None:
            allowed = [choice for choice in choices if values[param.divides] % choice == 0]
            if allowed != choices:
                # Optuna fixes a categorical's choices per name, so a filtered list gets its own name.
                return f"{param.path}@{param.divides}={values[param.divides]}", \
                    optuna.distributions.CategoricalDistribution(allowed)
        return param.path, optuna.distributions.CategoricalDistribution(choices)
    low = values[param.low] if isinstance(param.low, str) else param.low
    high = values[param.high] if isinstance(param.high, str) else param.high
    if param.kind == "int":
        step = param.step or 1
        # Optuna wants high on the step grid; the largest reachable value keeps the meaning of "at most high".
        high = low + (int(high) - int(low)) // step * step
        return param.path, optuna.distributions.IntDistribution(int(low), int(high), log=param.log, step=step)
    return param.path, optuna.distributions.FloatDistribution(float(low), float(high), log=param.log, step=param.step)


def in_distribution(distribution: optuna.distributions.BaseDistribution, value: Any) -> bool:
    """Whether `value` is one Optuna can take from `distribution` (on its grid, among its choices)."""
    try:
        return distribution._contains(distribution.to_internal_repr(value))
    except (ValueError, TypeError):
        return False


def _propose(param: Param, trial: optuna.Trial, values: dict[str, Any]) -> Any:
    """One parameter's value for this trial (or _UNSET when its `when` fails and it has no `otherwise`)."""
    if param.when and not all(values.get(name, _UNSET) in allowed for name, allowed in param.when.items()):
        return param.otherwise if param.has_otherwise else _UNSET
    if param.kind == "fixed":
        return param.value
    name, distribution = _distribution(param, values)
    if isinstance(distribution, optuna.distributions.CategoricalDistribution):
        return trial.suggest_categorical(name, distribution.choices)
    if isinstance(distribution, optuna.distributions.IntDistribution):
        return trial.suggest_int(name, distribution.low, distribution.high, step=distribution.step,
                                 log=distribution.log)
    return trial.suggest_float(name, distribution.low, distribution.high, step=distribution.step,
                               log=distribution.log)
