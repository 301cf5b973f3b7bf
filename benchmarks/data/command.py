"""`mixbench data`: list, download and inspect the benchmark datasets; and the shared `--data-dir` option."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

from benchmarks.data.files import HF_REPO_URL, download_file, file_status, resolve_data_dir, resolve_dataset
from benchmarks.data.registry import DATASETS, SPLIT_RULE_LABELS, get_dataset
from benchmarks.errors import DataError

Command = TypeVar("Command", bound=Callable)


def data_dir_option(command: Command) -> Command:
    """Add `--data-dir PATH` (default: $MIXBENCH_DATA_DIR, else ./dataset) to a click command; passes `data_dir`."""
    return click.option(
        "--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
        help="Folder with the datasets in Time-Series-Library layout (weather/weather.csv, ETT-small/ETTh1.csv, ...). "
             "Default: $MIXBENCH_DATA_DIR, else ./dataset.",
    )(command)


@click.group()
def data() -> None:
    """List, download and inspect the benchmark datasets.

    \b
    Example:
      mixbench data info weather --seq-len 96 --pred-len 96
    """


@data.command(name="list")
@data_dir_option
def list_datasets(data_dir: Path | None) -> None:
    """List the registered datasets and whether each file is present and matches its sha256.

    \b
    Example:
      mixbench data list --data-dir ./dataset
    """
    root = resolve_data_dir(data_dir)
    click.echo(f"data dir: {root.resolve()}")
    header = f"{'name':<14} {'channels':>8} {'rows':>8}  {'frequency':<9}  {'split':<17}  {'present':<7}  verified"
    click.echo(header)
    for spec in DATASETS.values():
        status = file_status(spec, root)
        if not status.present:
            verified = "-"
        elif status.verified is None:
            verified = "no reference hash"
        else:
            verified = "yes" if status.verified else "NO: sha256 differs"
        click.echo(f"{spec.name:<14} {spec.n_channels:>8,} {spec.n_rows:>8,}  {spec.frequency:<9}  "
                   f"{SPLIT_RULE_LABELS[spec.split_rule]:<17}  {'yes' if status.present else 'no':<7}  {verified}")


@data.command()
@click.argument("datasets", nargs=-1, required=True, metavar="DATASET...")
@click.option("--force", is_flag=True, help="Download again even when a copy is already there.")
@data_dir_option
def download(datasets: tuple[str, ...], force: bool, data_dir: Path | None) -> None:
    """Download datasets from the Time-Series-Library Hugging Face repo into the data dir, checking their sha256.

    \b
    Example:
      mixbench data download weather ETTh1 --data-dir ./dataset
    """
    # Files that may be missing or modified are the point here, so each is probed rather than resolved.
    specs = [get_dataset(name) for name in datasets]
    for spec in specs:
        status = file_status(spec, data_dir)
        if status.present and not force:
            if status.verified is False:
                raise DataError(f"{status.path} has sha256 {status.sha256} but {spec.name} should have "
                                f"{spec.sha256}; pass --force to replace it with a fresh download")
            click.echo(f"{spec.name}: already at {status.path}")
            continue
        click.echo(f"{spec.name}: downloading {spec.path} from {HF_REPO_URL}")
        path = download_file(spec, data_dir)
        check = "sha256 verified" if spec.sha256 is not None else "no reference sha256 to check"
        click.echo(f"{spec.name}: saved {path} ({check})")


@data.command()
@click.argument("dataset")
@click.option("--seq-len", type=int, default=96, show_default=True, help="Lookback rows per window.")
@click.option("--pred-len", type=int, default=96, show_default=True, help="Forecast rows per window.")
@click.option("--features", type=click.Choice(["M", "S", "MS"], case_sensitive=False), default="M",
              show_default=True, help="M: all channels to all; S: target to target; MS: all channels to target.")
@click.option("--target", default="OT", show_default=True, help="Target column for S and MS.")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Check the file's sha256 against the registry; --no-verify accepts a modified copy.")
@data_dir_option
def info(dataset: str, seq_len: int, pred_len: int, features: str, target: str, verify: bool,
         data_dir: Path | None) -> None:
    """Show a dataset's file, channels and the rows and windows of each split under the TSLib protocol.

    \b
    Example:
      mixbench data info weather --seq-len 96 --pred-len 96 --features M
    """
    # Imported here: it imports torch (~1 s, measured), which `mixbench data --help`, list and download never need.
    from benchmarks.data.protocol import DataProtocol, load_forecast_data

    protocol = DataProtocol(seq_len=seq_len, pred_len=pred_len, features=features, target=target)
    file = resolve_dataset(dataset, data_dir, verify=verify)
    forecast_data = load_forecast_data(file, protocol)
    spec = file.spec
    if spec.sha256 is None:
        check = "no reference hash"
    else:
        check = "verified" if file.sha256 == spec.sha256 else "DIFFERS from the registry"
    click.echo(f"{spec.name}: {spec.description}")
    click.echo(f"file      {file.path}")
    click.echo(f"sha256    {file.sha256} ({check})")
    click.echo(f"protocol  features {protocol.features}, target {protocol.target}, seq_len {protocol.seq_len:,}, "
               f"pred_len {protocol.pred_len:,}, {SPLIT_RULE_LABELS[spec.split_rule]} split")
    click.echo(f"channels  {forecast_data.n_channels:,} in, {forecast_data.n_targets:,} out, "
               f"{forecast_data.n_time_features} time features (freq {protocol.freq})")
    click.echo(f"{'split':<6} {'rows':>10} {'windows':>10}  file rows")
    for split_name, split in forecast_data.splits.items():
        last_row = split.first_row + split.num_rows
        click.echo(f"{split_name:<6} {split.num_rows:>10,} {split.num_windows:>10,}  "
                   f"[{split.first_row:,}, {last_row:,})")
