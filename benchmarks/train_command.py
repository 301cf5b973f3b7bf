"""`mixbench train` (one experiment, tracked in MLflow) and `mixbench ui` (the MLflow UI on the same store)."""
from __future__ import annotations

import os
import re
import sys
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import Any

import click
import yaml

from benchmarks.errors import InputError

_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def parse_settings(settings: tuple[str, ...] | list[str], model: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """`--set` items -> (model overrides, training overrides).

    `key=value` sets a field of the model's config, `train.key=value` a TrainConfig field; values are YAML
    (`1e-3` counts as a number, as in Python). Unknown keys and values a field rejects raise InputError.
    """
    from benchmarks.engine import TrainConfig, check_train_value
    from benchmarks.models import PROTOCOL_FIELDS, model_classes

    config_class, _ = model_classes(model)
    model_fields = [name for name in config_class.__dataclass_fields__ if name not in PROTOCOL_FIELDS]
    train_fields = [field.name for field in fields(TrainConfig)]
    model_overrides: dict[str, Any] = {}
    train_overrides: dict[str, Any] = {}
    for item in settings:
        key, equals, text = item.partition("=")
        key = key.strip()
        if not equals or not key:
            raise InputError(f"--set {item!r} is not key=value; e.g. --set d_model=128, --set train.learning_rate=1e-3")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            raise InputError(f"--set {item!r}: the value is not valid YAML; quote it or fix it") from None
        if isinstance(value, str) and _NUMBER.match(value.strip()):
            value = float(value)
        if key.startswith("train."):
            name = key[len("train."):]
            if name not in train_fields:
                raise InputError(f"--set {key}: unknown training setting; use train.<one of {', '.join(train_fields)}>")
            train_overrides[name] = check_train_value(name, value)
        elif key in model_fields:
            model_overrides[key] = value
        elif key in train_fields:
            raise InputError(f"--set {key}: training settings take the train. prefix; use --set train.{item}")
        elif key in PROTOCOL_FIELDS:
            raise InputError(f"--set {key}: it comes from the data protocol; use --seq-len / --pred-len instead")
        else:
            raise InputError(f"--set {key}: {model} has no such setting; use one of {', '.join(model_fields)} "
                             f"or train.<setting>")
    return model_overrides, train_overrides


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
              help="Override a model setting (d_model=128) or a training setting with the train. prefix "
                   "(train.learning_rate=1e-3, train.batch_size=64, train.lradj=cosine). Repeatable; values are YAML.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--tracking-uri", default=None,
              help="MLflow store or server (default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db).")
@click.option("--experiment", default="mixbench", show_default=True, help="MLflow experiment name.")
@click.option("--data-dir", default=None, help="Dataset folder (default: $MIXBENCH_DATA_DIR, else ./dataset).")
@click.option("--limit-train-batches", type=int, default=None, help="Cap training batches per epoch (smoke runs).")
@click.option("--limit-eval-batches", type=int, default=None, help="Cap validation and test batches (smoke runs).")
def train(model: str, dataset: str, pred_len: int, seq_len: int, features: str, target: str, epochs: int | None,
          seed: int, settings: tuple[str, ...], device: str, tracking_uri: str | None, experiment: str,
          data_dir: str | None, limit_train_batches: int | None, limit_eval_batches: int | None) -> None:
    """Train and test one model on one dataset; log everything to MLflow.

    Settings start from the model's reference recipe for the dataset and horizon; --epochs, --limit-* and --set
    override them.

    \b
    Example:
      mixbench train --model mixmamba --dataset ETTh1 --pred-len 96 --epochs 3 \\
          --set d_model=32 --set train.learning_rate=1e-3
    """
    from tqdm import tqdm

    from benchmarks.engine import (
        EpochReport,
        ExperimentSpec,
        GpuOutOfMemoryError,
        NonFiniteLossError,
        check_train_value,
        resolve_experiment,
        run_experiment,
    )
    from benchmarks.models import model_config
    from benchmarks.tracking import TrackingConfig, check_tracking_uri, redact_uri, resolve_tracking_uri

    model_overrides, train_overrides = parse_settings(settings, model)
    for name, value in (("epochs", epochs), ("limit_train_batches", limit_train_batches),
                        ("limit_eval_batches", limit_eval_batches)):
        if value is not None:
            train_overrides[name] = check_train_value(name, value)
    uri = resolve_tracking_uri(tracking_uri)
    check_tracking_uri(uri)
    spec = ExperimentSpec(dataset=dataset, model=model, pred_len=pred_len, seq_len=seq_len, features=features,
                          target=target, seed=seed, model_overrides=model_overrides, train_overrides=train_overrides,
                          device=device, data_dir=data_dir)
    tracking = TrackingConfig(uri=uri, experiment=experiment, kind="train")

    resolved = resolve_experiment(spec)
    # Fail on bad model settings now, before data loads; enc_in is only known then and no setting depends on it.
    model_config(model, seq_len, pred_len, 1, resolved.model_overrides)
    epochs_total = resolved.train.epochs
    bars: list[tqdm] = []

    def advance(epoch: int, step: int, steps: int) -> None:
        if step == 1:
            bars.append(tqdm(total=steps, desc=f"epoch {epoch}/{epochs_total}", unit="batch", dynamic_ncols=True))
        bars[-1].update(1)

    def summarise(report: EpochReport) -> None:
        bars[-1].set_postfix(train=f"{report.train_loss:.4f}", val=f"{report.val_loss:.4f}",
                             best=f"{report.best_val_loss:.4f}", lr=f"{report.learning_rate:.2e}",
                             samples_s=f"{report.samples_per_s:,.0f}")
        bars[-1].close()

    with tempfile.TemporaryDirectory(prefix="mixbench-train-") as artifacts:
        try:
            result = run_experiment(resolved, on_epoch=summarise, on_batch=advance, artifact_dir=Path(artifacts),
                                    tracking=tracking)
        except (NonFiniteLossError, GpuOutOfMemoryError) as error:
            # Both are fixed by a setting (learning rate, batch size), so they are bad input, not a crash.
            raise InputError(str(error)) from None
        finally:
            for bar in bars:
                bar.close()
    opener = f"mixbench ui --tracking-uri {redact_uri(uri)}" if not uri.startswith("http") else redact_uri(uri)
    click.echo(
        f"{model} on {dataset} (pred_len {pred_len}): test MSE {result.test_mse:.4f}  MAE {result.test_mae:.4f}  "
        f"best epoch {result.best_epoch}/{result.epochs_run}  run {result.run_id} in experiment {experiment!r}; "
        f"open it with: {opener}"
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
    from benchmarks.tracking import redact_uri, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith(("http://", "https://")):
        raise InputError(f"--tracking-uri {redact_uri(uri)} is already a tracking server; open it in a browser")
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise InputError(f"no MLflow store at {uri[len('sqlite:///'):]}; run `mixbench train` here first "
                         "or pass --tracking-uri sqlite:////path/to/mlflow.db")
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host,
               "--port", str(port), "--workers", "1"]
    click.echo(f"MLflow UI for {redact_uri(uri)} at http://{host}:{port} (Ctrl+C stops it)", err=True)
    sys.stdout.flush()
    os.execv(sys.executable, command)
