"""`mixbench train` (one experiment, tracked in MLflow) and `mixbench ui` (the MLflow UI on the same store)."""
from __future__ import annotations

import ipaddress
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import click
import yaml
from tqdm import tqdm

from benchmarks.errors import SettingError, TrackingError
from benchmarks.training.callbacks import EpochReport, TrainingCallback, capped_test_note

if TYPE_CHECKING:
    from benchmarks.experiment import Experiment

# A CPU run estimated (from its first batches) to take longer than this gets one warning line.
SLOW_RUN_S = 30 * 60
SLOW_RUN_PROBE_BATCHES = 4
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
    """A tqdm bar per epoch (batches, ETA of the epoch), closed with the epoch's losses, learning rate, speed and the
    ETA of the whole run; on a CPU, one warning line once the first batches show the run will be long."""

    def __init__(self, epochs: int, *, on_cpu: bool = False, warn_above_s: float = SLOW_RUN_S) -> None:
        self.epochs = epochs
        self.on_cpu = on_cpu
        self.warn_above_s = warn_above_s
        self.bar: tqdm | None = None
        self.started = self.epoch_started = 0.0
        self.first_epoch = 1
        self.warned = False

    def on_start(self, experiment: Experiment, history: Sequence[dict[str, float]]) -> None:
        self.started = time.monotonic()
        self.first_epoch = len(history) + 1

    def on_batch(self, epoch: int, step: int, steps: int) -> None:
        if step == 1:
            remaining = self._remaining_text(epoch)
            self.bar = tqdm(total=steps, desc=f"epoch {epoch}/{self.epochs}{remaining}", unit="batch",
                            dynamic_ncols=True)
            self.epoch_started = time.monotonic()
        if self.bar is not None:
            self.bar.update(1)
        if self.on_cpu and not self.warned and epoch == self.first_epoch and step == SLOW_RUN_PROBE_BATCHES:
            self.warned = True
            per_batch = (time.monotonic() - self.epoch_started) / (step - 1) if step > 1 else 0.0
            estimate = per_batch * steps * (self.epochs - epoch + 1)
            if estimate > self.warn_above_s:
                tqdm.write(f"warning: on the CPU this run will take about {_duration(estimate)} ({per_batch:.1f} s per "
                           f"batch x {steps} batches x {self.epochs - epoch + 1} epochs); a GPU (--device cuda), fewer "
                           "--epochs, --limit-train-batches or a smaller model (--set model.d_model=...) is faster",
                           file=sys.stderr)

    def _remaining_text(self, epoch: int) -> str:
        done = epoch - self.first_epoch
        if done < 1:
            return ""
        per_epoch = (time.monotonic() - self.started) / done
        return f" (run ETA {_duration(per_epoch * (self.epochs - epoch + 1))})"

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


def _duration(seconds: float) -> str:
    """`1 h 05 min`, `12 min`, `40 s`."""
    if seconds >= 3600:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
    if seconds >= 60:
        return f"{round(seconds / 60)} min"
    return f"{round(seconds)} s"


@click.command("train", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", required=True, help="Registered model: mixmamba, patchtst, itransformer or dlinear.")
@click.option("--dataset", required=True, help="Registered dataset, e.g. weather or ETTh1 (see `mixbench data list`).")
@click.option("--pred-len", type=int, default=96, show_default=True, help="Forecast horizon.")
@click.option("--seq-len", type=int, default=96, show_default=True, help="Lookback window.")
@click.option("--features", type=click.Choice(["M", "S", "MS"]), default="M", show_default=True,
              help="M: all channels -> all; S: target -> target; MS: all channels -> target.")
@click.option("--target", default=None,
              help="Target column for S and MS (default: the dataset's, OT for the TSLib files).")
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
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Check the dataset file's sha256 against the registry; --no-verify trains on a modified copy.")
@click.option("--limit-train-batches", type=int, default=None, help="Cap training batches per epoch (smoke runs).")
@click.option("--limit-eval-batches", type=int, default=None,
              help="Cap validation and test batches (smoke runs; the run is then tagged test_complete=false and left "
                   "out of leaderboards and tables).")
def train(model: str, dataset: str, pred_len: int, seq_len: int, features: str, target: str, epochs: int | None,
          seed: int, settings: tuple[str, ...], device: str, tracking_uri: str | None, experiment_name: str,
          data_dir: str | None, verify: bool, limit_train_batches: int | None, limit_eval_batches: int | None
          ) -> None:
    """Train and test one model on one dataset; log everything to MLflow.

    Settings start from the model's reference recipe for the dataset and horizon; --epochs, --limit-* and --set
    override them.

    \b
    Examples:
      mixbench train --model mixmamba --dataset ETTh1 --pred-len 96 --epochs 3 \\
          --set model.d_model=32 --set train.learning_rate=1e-3
      mixbench train --model dlinear --dataset weather --pred-len 336
      mixbench train --model patchtst --dataset ETTh1 --no-verify    # a modified copy of ETTh1.csv
    """
    # Imported here: torch, pandas and MLflow take 2.6 s to import, which `mixbench train --help` need not wait for.
    from benchmarks.data.files import resolve_dataset
    from benchmarks.experiment import resolve_experiment
    from benchmarks.tracking.callback import MLflowCallback
    from benchmarks.tracking.store import TrackingStore, quiet_run_urls
    from benchmarks.training.engine import resolve_device, run_experiment

    quiet_run_urls()
    settings = parse_settings(settings)
    for name, value in (("epochs", epochs), ("limit_train_batches", limit_train_batches),
                        ("limit_eval_batches", limit_eval_batches)):
        if value is not None:
            settings[f"train.{name}"] = value
    store = TrackingStore.resolve(tracking_uri)
    data = resolve_dataset(dataset, data_dir, verify=verify)
    experiment = resolve_experiment(model, data, pred_len=pred_len, seq_len=seq_len, features=features,
                                    target=target, seed=seed, settings=settings, device=device)
    tracked = MLflowCallback(store, experiment_name, kind="train")
    with tempfile.TemporaryDirectory(prefix="mixbench-train-") as artifacts:
        bars = ProgressBars(experiment.train.epochs, on_cpu=resolve_device(experiment.device).type == "cpu")
        result = run_experiment(experiment, callbacks=[bars, tracked],
                                artifact_dir=Path(artifacts))
    opener = store.redacted if store.is_server else f"mixbench ui --tracking-uri {store.redacted}"
    capped = capped_test_note(result.test_windows, result.test_windows_total)
    click.echo(
        f"{model} on {experiment.dataset} (pred_len {pred_len}): test MSE {result.test_mse:.4f}  "
        f"MAE {result.test_mae:.4f}{capped}  best epoch {result.best_epoch}/{result.epochs_run}  run {tracked.run_id} "
        f"in experiment {experiment_name!r}; open it with: {opener}"
    )


@click.command("ui", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--tracking-uri", default=None,
              help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db).")
@click.option("--experiment", "experiment_name", default="mixbench", show_default=True,
              help="MLflow experiment whose runs page the printed URL opens.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind; 127.0.0.1 keeps the UI on this machine (any other needs --allow-remote).")
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True, help="Port to serve on.")
@click.option("--allow-remote", is_flag=True,
              help="Allow a --host other than loopback, and a browser there to use any name of this machine: the "
                   "MLflow UI has no login, so anyone who reaches the port can read and change every run.")
def ui(tracking_uri: str | None, experiment_name: str, host: str, port: int, allow_remote: bool) -> None:
    """Open the MLflow UI on the store `mixbench train` and `mixbench search` log to (runs until Ctrl+C).

    Prints the URL of the experiment's runs page.

    \b
    Examples:
      mixbench ui                                   # then open the printed http://127.0.0.1:5000/#/experiments/1/runs
      mixbench ui --port 5001 --tracking-uri sqlite:///reproduce/mlflow.db
      mixbench ui --host 0.0.0.0 --allow-remote     # reachable from other machines, without a login
    """
    from benchmarks.tracking.store import TrackingStore

    if not _is_loopback(host) and not allow_remote:
        raise SettingError(f"--host {host} would serve the MLflow UI, which has no login, beyond this machine; pass "
                           "--allow-remote to do it anyway, or keep --host 127.0.0.1 (an SSH tunnel reaches it)")
    store = TrackingStore.resolve(tracking_uri, probe=False)
    if store.is_server:
        raise TrackingError(f"--tracking-uri {store.redacted} is already a tracking server; open it in a browser")
    if store.sqlite_path is not None and not store.sqlite_path.is_file():
        raise TrackingError(f"no MLflow store at {store.sqlite_path}; run `mixbench train` here first "
                            "or pass --tracking-uri sqlite:////path/to/mlflow.db")
    experiment_id = store.experiment_id(experiment_name, create=False)
    if not _is_loopback(host):
        click.echo(f"warning: serving the MLflow UI on {host}:{port} without a login: anyone who can reach this port "
                   "can read, change and delete every run, param and artifact in the store", err=True)
    browse = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    base = f"http://{browse}:{port}"
    where = f"{base}/#/experiments/{experiment_id}/runs" if experiment_id is not None else base
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store.uri, "--host", host,
               "--port", str(port), "--workers", "1"]
    command += _server_access_flags(host, port)
    # The server's INFO lines (backends discovered, ...) are noise on a local run; its warnings still show.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PYTHONWARNINGS", "ignore:starlette.middleware.wsgi is deprecated")  # inside MLflow
    click.echo(f"MLflow UI for {store.redacted}: runs of experiment {experiment_name!r} at {where} "
               "(Ctrl+C stops it)", err=True)
    sys.stdout.flush()
    os.execv(sys.executable, command)


def _server_access_flags(host: str, port: int) -> list[str]:
    """MLflow server flags for the Host and Origin headers it answers (MLflow 3 answers any other Host with 403
    "Invalid Host header" and blocks a POST from any other Origin).

    On loopback only this machine's names pass (MLflow's default would also let private addresses in). With
    --allow-remote the browser may use any name of the machine (a DNS name, an SSH alias, a private or public
    address), which cannot be listed up front: every Host header is accepted, and a POST from a page served on
    this port under any name, so the UI's own requests work (other sites' pages, on other ports, stay blocked).
    MLFLOW_SERVER_ALLOWED_HOSTS / MLFLOW_SERVER_CORS_ALLOWED_ORIGINS, when set, are left to take effect instead.
    """
    if _is_loopback(host):
        return ["--allowed-hosts", f"127.0.0.1:{port},localhost:{port},[::1]:{port}"]
    flags = []
    if not os.environ.get("MLFLOW_SERVER_ALLOWED_HOSTS"):
        flags += ["--allowed-hosts", "*"]
    if not os.environ.get("MLFLOW_SERVER_CORS_ALLOWED_ORIGINS"):
        flags += ["--cors-allowed-origins", f"http://*:{port}"]
    return flags


def _is_loopback(host: str) -> bool:
    """Whether `host` names this machine's loopback interface only (127.0.0.0/8, ::1 or localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
