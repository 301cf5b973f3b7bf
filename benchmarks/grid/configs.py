"""Where a benchmark's configs come from (`--configs default|best|FILE`): the recipe defaults, the best config of
the latest finished search per (dataset, model, pred_len) in MLflow, or a YAML file of entries as the search writes.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from benchmarks.errors import SettingError
from benchmarks.models.registry import model_label
from benchmarks.tracking.store import TrackingStore

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

# What `mixbench search` logs at the root of its parent run (search/summary.py BEST_CONFIG_FILE).
BEST_CONFIG_ARTIFACT = "best_config.yaml"
PROGRESS_BAR_ENV = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
ENTRY_KEYS = ("model", "dataset", "pred_len", "seq_len", "display_name", "model_overrides", "train_overrides")


@dataclass(frozen=True)
class ConfigEntry:
    """One config to benchmark: overrides on top of the recipe of (model, dataset, pred_len).

    dataset / pred_len None mean every dataset / horizon of the grid; seq_len None keeps the grid's lookback;
    display_name, when given, becomes the run's `display_name` tag and the model's column in tables.
    """

    model: str
    dataset: str | None = None
    pred_len: int | None = None
    seq_len: int | None = None
    display_name: str | None = None
    model_overrides: dict[str, Any] = field(default_factory=dict)
    train_overrides: dict[str, Any] = field(default_factory=dict)

    def settings(self) -> dict[str, Any]:
        """The entry's overrides in the one spelling: `model.<field>` and `train.<field>`."""
        return ({f"model.{key}": value for key, value in self.model_overrides.items()}
                | {f"train.{key}": value for key, value in self.train_overrides.items()})

    def matches(self, dataset: str, model: str, pred_len: int) -> bool:
        """Whether this entry configures the grid cell (dataset, model, pred_len)."""
        return (self.model == model and self.dataset in (None, dataset) and self.pred_len in (None, pred_len))


def parse_entry(raw: Any, where: str) -> ConfigEntry:
    """A ConfigEntry from one YAML mapping; `where` names it in errors (file and position)."""
    if not isinstance(raw, dict):
        raise SettingError(f"{where} must be a mapping with keys {', '.join(ENTRY_KEYS)}; fix the YAML",
                           setting="configs")
    unknown = sorted(set(raw) - set(ENTRY_KEYS))
    if unknown:
        raise SettingError(f"{where} has unknown key {unknown[0]!r}; valid keys are {', '.join(ENTRY_KEYS)}",
                           setting="configs")
    if not isinstance(raw.get("model"), str):
        raise SettingError(f"{where} needs `model:` (a registry name such as patchtst)", setting="configs")
    for key in ("pred_len", "seq_len"):
        value = raw.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise SettingError(f"{where}: {key}={value!r} must be a positive integer", setting="configs")
    for key in ("model_overrides", "train_overrides"):
        if not isinstance(raw.get(key) or {}, dict):
            raise SettingError(f"{where}: {key} must be a mapping of setting -> value", setting="configs")
    display_name = raw.get("display_name")
    return ConfigEntry(
        model=raw["model"],
        dataset=None if raw.get("dataset") is None else str(raw["dataset"]),
        pred_len=raw.get("pred_len"),
        seq_len=raw.get("seq_len"),
        display_name=None if display_name is None else str(display_name),
        model_overrides=dict(raw.get("model_overrides") or {}),
        train_overrides=dict(raw.get("train_overrides") or {}),
    )


def load_config_file(path: Path) -> list[ConfigEntry]:
    """Entries of a configs YAML: one mapping (a search's best-config file), a list of them, or `configs: [...]`."""
    path = Path(path)
    if not path.is_file():
        raise SettingError(f"{{setting}} {path}: no such file; pass default, best or a YAML file of configs",
                           setting="configs")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise SettingError(f"{{setting}} {path} is not valid YAML ({str(error).splitlines()[0]}); fix the file",
                           setting="configs") from None
    if isinstance(data, dict) and set(data) == {"configs"}:
        data = data["configs"]
    items = data if isinstance(data, list) else [data]
    if not items:
        raise SettingError(f"{{setting}} {path} has no entries; add at least one mapping with `model:`",
                           setting="configs")
    return [parse_entry(item, f"configs file {path} entry {index + 1}") for index, item in enumerate(items)]


def best_search_configs(store: TrackingStore, experiment: str, cells: list[tuple[str, str, int]]
                        ) -> list[ConfigEntry]:
    """The best config of the latest finished search (parent run, kind=search) for each (dataset, model, pred_len),
    labelled "<Model> (searched)" so tables show it beside the recipe's config.

    Raises SettingError naming the first cell that no finished search covers.
    """
    client = store.client()
    found = client.get_experiment_by_name(experiment)
    entries = []
    for dataset, model, pred_len in cells:
        runs = [] if found is None else client.search_runs(
            [found.experiment_id],
            filter_string=(
                "tags.`mixbench.kind` = 'search' and attributes.status = 'FINISHED' and "
                f"tags.dataset = '{dataset}' and tags.model = '{model}' and tags.pred_len = '{pred_len}'"
            ),
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if not runs:
            raise SettingError(
                f"{{setting}} best: no finished search for {model} on {dataset} at pred_len {pred_len} in experiment "
                f"'{experiment}'; run `mixbench search --dataset {dataset} --model {model} --pred-len {pred_len}` "
                "or use {setting} default", setting="configs")
        entries.append(_entry_from_search(client, runs[0], dataset, model, pred_len))
    return entries


def _entry_from_search(client: MlflowClient, run: Run, dataset: str, model: str, pred_len: int) -> ConfigEntry:
    """The search run's best-config YAML artifact, else its `best.model.*` / `best.train.*` params."""
    names = {artifact.path for artifact in client.list_artifacts(run.info.run_id)}
    if BEST_CONFIG_ARTIFACT in names:
        with tempfile.TemporaryDirectory() as directory, _no_download_bars():
            local = client.download_artifacts(run.info.run_id, BEST_CONFIG_ARTIFACT, directory)
            entry = parse_entry(yaml.safe_load(Path(local).read_text()), f"search run {run.info.run_id} best config")
        return ConfigEntry(model, dataset, pred_len, entry.seq_len, _searched_label(model), entry.model_overrides,
                           entry.train_overrides)
    model_overrides, train_overrides, seq_len = {}, {}, None
    for key, text in run.data.params.items():
        if not key.startswith("best."):
            continue
        value = yaml.safe_load(text)
        name = key[len("best."):]
        if name.startswith("model."):
            model_overrides[name[len("model."):]] = value
        elif name.startswith("train."):
            train_overrides[name[len("train."):]] = value
        elif name == "seq_len":
            seq_len = int(value)
    if not model_overrides and not train_overrides:
        raise SettingError(
            f"{{setting}} best: search run {run.info.run_id} ({model}, {dataset}, {pred_len}) has neither a "
            f"{BEST_CONFIG_ARTIFACT} artifact nor best.* params; re-run the search or pass a configs FILE",
            setting="configs")
    return ConfigEntry(model, dataset, pred_len, seq_len, _searched_label(model), model_overrides, train_overrides)


@contextmanager
def _no_download_bars() -> Iterator[None]:
    # MLflow draws a "Downloading artifacts" progress bar per file, one per refitted cell: noise for a small YAML.
    saved = os.environ.get(PROGRESS_BAR_ENV)
    os.environ[PROGRESS_BAR_ENV] = "false"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(PROGRESS_BAR_ENV, None)
        else:
            os.environ[PROGRESS_BAR_ENV] = saved


def _searched_label(model: str) -> str:
    """The table column of a searched config, kept apart from the recipe's ("MixMamba (searched)")."""
    return f"{model_label(model)} (searched)"
