"""`mixbench train` (one experiment, tracked in MLflow) and `mixbench ui` (the MLflow UI on the same store)."""
from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import click
import yaml
from tqdm import tqdm

from benchmarks.errors import SettingError, TrackingError
from benchmarks.training.callbacks import EpochReport, TrainingCallback

_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def parse_settings(settings: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """`--set` items -> {setting: value} in the one spelling (`model.<field>`, `train.<field>`).

    Values are YAML (`1e-3` counts as a number, as in Python). Which keys exist, and which values they take, is
    checked once, when the experiment is resolved.
    """
    parsed: dict[str, Any] = {}
    for item in settings:
        key, equals, text = item.partition("=")
        key = key.strip()
        if not equals or not key:
            raise SettingError(f"{{setting}} {item!r} is not key=value; e.g. model.d_model=128, "
                               "train.learning_rate=1e-3", setting="settings")
        if "." not in key:
            raise SettingError(f"{{setting}} {item!r}: name the section, model.{key} or train.{key}",
                               setting="settings")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            raise SettingError(f"{{setting}} {item!r}: the value is not valid YAML; quote it or fix it",
                               setting="settings") from None
        if isinstance(value, str) and _NUMBER.match(value.strip()):
            value = float(value)
        parsed[key] = value
    return parsed


class ProgressBars(TrainingCallback):
    """A tqdm bar per epoch (batches, ETA), closed with the epoch's losses, learning rate and speed."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs
        self.bar: tqdm | None = None

    def on_batch(self, epoch: int, step: int, steps: int) -> None:
        if step == 1:
            self.bar = tqdm(total=steps, desc=f"epoch {epoch}/{self.epochs}", unit="batch", dynamic_ncols=True)
        if self.bar is not None:
            self.bar.update(1)

    def on_epoch(self, report: EpochReport) -> None:
        if self.bar is None:
            return
        self.bar.set_postfix(train=f"{report.train_loss:.4f}", val=f"{report.val_loss:.4f}",
                             best=f"{report.best_val_loss:.4f}", lr=f"{report.learning_rate:.2e}",
                             samples_s=f"{report.samples_per_s:,.0f}")
        self.bar.close()
        self.bar = None

    def on_failure(self, error: BaseException) -> None:
        if self.bar is not None:
            self.bar.close()


@click.command("train", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", required=True, help="Registered model: mixmamba, patchtst, itransformer or dlinear.")
@click.option("--dataset", required=True, help="Registered dataset, e.g. weather or ETTh1 (see `mixbench data list`).")
@click.option("--pred-len", type=int, default=96, show_default=True, help="Forecast horizon.")
@click.option("--seq-len", type=int, default=96, show_default=True, help="Lookback window.")
@click.option("--features", type=click.Choice(["M", "S", "MS"]), default="M", show_default=True,
              help="M: all channels -> all; S: target -> target; MS: all channels -> target.")
@click.option("--target", default="OT", show_default=True, help="Target column for S and MS.")
@click.option("--epochs", type=int, default=None, help="Training epochs (default: the recipe's).")
@click.option("--seed", type=int, default=2021, show_default=True, help="Seed of every random number generator.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Override a setting, spelt as in search spaces and MLflow params: model.<field> "
                   "(model.d_model=128) or train.<field> (train.learning_rate=1e-3, train.batch_size=64, "
                   "train.lradj=cosine). Repeatable; values are YAML.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--tracking-uri", default=None,
              help="MLflow store or server (default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db).")
@click.option("--experiment", "experiment_name", default="mixbench", show_default=True, help="MLflow experiment name.")
@click.option("--data-dir", default=None, help="Dataset folder (default: $MIXBENCH_DATA_DIR, else ./dataset).")
@click.option("--limit-train-batches", type=int, default=None, help="Cap training batches per epoch (smoke runs).")
@click.option("--limit-eval-batches", type=int, default=None, help="Cap validation and test batches (smoke runs).")
def train(model: str, dataset: str, pred_len: int, seq_len: int, features: str, target: str, epochs: int | None,
          seed: int, settings: tuple[str, ...], device: str, tracking_uri: str | None, experiment_name: str,
          data_dir: str | None, limit_train_batches: int | None, limit_eval_batches: int | None) -> None:
    """Train and test one model on one dataset; log everything to MLflow.

    Settings start from the model's reference recipe for the dataset and horizon; --epochs, --limit-* and --set
    override them.

    \b
    Example:
      mixbench train --model mixmamba --dataset ETTh1 --pred-len 96 --epochs 3 \\
          --set model.d_model=32 --set train.learning_rate=1e-3
    """
    # Imported here: torch, pandas and MLflow take 2.6 s to import, which `mixbench train --help` need not wait for.
    from benchmarks.data.files import resolve_dataset
    from benchmarks.experiment import resolve_experiment
    from benchmarks.tracking.callback import MLflowCallback
    from benchmarks.tracking.store import TrackingStore, quiet_run_urls
    from benchmarks.training.engine import run_experiment

    quiet_run_urls()
    settings = parse_settings(settings)
    for name, value in (("epochs", epochs), ("limit_train_batches", limit_train_batches),
                        ("limit_eval_batches", limit_eval_batches)):
        if value is not None:
            settings[f"train.{name}"] = value
    store = TrackingStore.resolve(tracking_uri)
    data = resolve_dataset(dataset, data_dir)
    experiment = resolve_experiment(model, data, pred_len=pred_len, seq_len=seq_len, features=features,
                                    target=target, seed=seed, settings=settings, device=device)
    tracked = MLflowCallback(store, experiment_name, kind="train")
    with tempfile.TemporaryDirectory(prefix="mixbench-train-") as artifacts:
        result = run_experiment(experiment, callbacks=[ProgressBars(experiment.train.epochs), tracked],
                                artifact_dir=Path(artifacts))
    opener = store.redacted if store.is_server else f"mixbench ui --tracking-uri {store.redacted}"
    click.echo(
        f"{model} on {experiment.dataset} (pred_len {pred_len}): test MSE {result.test_mse:.4f}  "
        f"MAE {result.test_mae:.4f}  best epoch {result.best_epoch}/{result.epochs_run}  run {tracked.run_id} in "
        f"experiment {experiment_name!r}; open it with: {opener}"
    )


@click.command("ui", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--tracking-uri", default=None,
              help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind; 127.0.0.1 keeps the UI on this machine.")
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True, help="Port to serve on.")
def ui(tracking_uri: str | None, host: str, port: int) -> None:
    """Open the MLflow UI on the store `mixbench train` and `mixbench search` log to (runs until Ctrl+C).

    \b
    Example:
      mixbench ui --port 5000     # then browse http://127.0.0.1:5000
    """
    from benchmarks.tracking.store import TrackingStore

    store = TrackingStore.resolve(tracking_uri, probe=False)
    if store.is_server:
        raise TrackingError(f"--tracking-uri {store.redacted} is already a tracking server; open it in a browser")
    if store.sqlite_path is not None and not store.sqlite_path.is_file():
        raise TrackingError(f"no MLflow store at {store.sqlite_path}; run `mixbench train` here first "
                            "or pass --tracking-uri sqlite:////path/to/mlflow.db")
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store.uri, "--host", host,
               "--port", str(port), "--workers", "1"]
    click.echo(f"MLflow UI for {store.redacted} at http://{host}:{port} (Ctrl+C stops it)", err=True)
    sys.stdout.flush()
    os.execv(sys.executable, command)
