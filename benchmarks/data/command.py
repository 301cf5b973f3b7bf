"""`mixbench data`: list, download, inspect and add datasets (your own CSVs too); and the shared `--data-dir` option."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

from benchmarks.data.files import (
    HF_REPO_URL,
    download_file,
    file_status,
    own_spec,
    read_own_csv,
    resolve_data_dir,
    resolve_dataset,
)
from benchmarks.data.registry import (
    DEFAULT_DATE_COLUMN,
    add_user_dataset,
    all_datasets,
    get_dataset,
    parse_split_rule,
    remove_user_dataset,
    split_rule_label,
    user_registry_path,
)
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
    """List, download and inspect the benchmark datasets, and add your own CSVs.

    \b
    Example:
      mixbench data info weather --seq-len 96 --pred-len 96
      mixbench data add sales ./sales.csv --target units --split 60/20/20
      mixbench data add meter ./meter.csv --date-column timestamp
    """


@data.command(name="list")
@data_dir_option
def list_datasets(data_dir: Path | None) -> None:
    """List the registered datasets (built in, then your own) and whether each file is present and matches its sha256.

    \b
    Example:
      mixbench data list --data-dir ./dataset
    """
    root = resolve_data_dir(data_dir)
    click.echo(f"data dir: {root.resolve()}; own datasets: {user_registry_path()}")
    header = (f"{'name':<14} {'channels':>8} {'rows':>8}  {'frequency':<9}  {'date column':<11}  {'split':<17}  "
              f"{'present':<7}  verified")
    click.echo(header)
    for spec in all_datasets().values():
        status = file_status(spec, root)
        if not status.present:
            verified = "-"
        elif status.verified is None:
            verified = "no reference hash"
        else:
            verified = "yes" if status.verified else "NO: sha256 differs"
        click.echo(f"{spec.name:<14} {spec.n_channels:>8,} {spec.n_rows:>8,}  {spec.frequency:<9}  "
                   f"{spec.date_column:<11}  {split_rule_label(spec.split_rule):<17}  "
                   f"{'yes' if status.present else 'no':<7}  {verified}"
                   f"{f'  (own: {status.path})' if spec.is_own else ''}")


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
    own = [spec.name for spec in specs if spec.is_own]
    if own:
        raise DataError(f"{own[0]} is your own dataset (added with `mixbench data add`); there is nothing to download")
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
@click.option("--target", default=None,
              help="Target column for S and MS (default: the dataset's, OT for the TSLib files).")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Check the file's sha256 against the registry; --no-verify accepts a modified copy.")
@data_dir_option
def info(dataset: str, seq_len: int, pred_len: int, features: str, target: str, verify: bool,
         data_dir: Path | None) -> None:
    """Show a dataset's file, channels and the rows and windows of each split under the TSLib protocol.

    DATASET is a registered name or the path of a CSV.

    \b
    Example:
      mixbench data info weather --seq-len 96 --pred-len 96 --features M
    """
    # Imported here: it imports torch (~1 s, measured), which `mixbench data --help`, list and download never need.
    from benchmarks.data.protocol import DataProtocol, load_forecast_data

    protocol = DataProtocol(seq_len=seq_len, pred_len=pred_len, features=features, target=target)
    file = resolve_dataset(dataset, data_dir, verify=verify)
    forecast_data = load_forecast_data(file, protocol)
    protocol = forecast_data.protocol  # own data may name its own target in place of TSLib's OT
    spec = file.spec
    if spec.is_own:
        check = "as added" if spec.source == "user" else "read directly"
    elif spec.sha256 is None:
        check = "no reference hash; rows and channels match the registry" if verify else "no reference hash"
    else:
        check = "verified" if file.sha256 == spec.sha256 else "DIFFERS from the registry"
    click.echo(f"{spec.name}: {spec.description}")
    click.echo(f"file      {file.path} (dates in column {spec.date_column!r})")
    click.echo(f"sha256    {file.sha256} ({check})")
    click.echo(f"protocol  features {protocol.features}, target {protocol.target}, seq_len {protocol.seq_len:,}, "
               f"pred_len {protocol.pred_len:,}, {split_rule_label(spec.split_rule)} split")
    click.echo(f"channels  {forecast_data.n_channels:,} in, {forecast_data.n_targets:,} out, "
               f"{forecast_data.n_time_features} time features (freq {protocol.freq})")
    click.echo(f"{'split':<6} {'rows':>10} {'windows':>10}  file rows")
    for split_name, split in forecast_data.splits.items():
        last_row = split.first_row + split.num_rows
        click.echo(f"{split_name:<6} {split.num_rows:>10,} {split.num_windows:>10,}  "
                   f"[{split.first_row:,}, {last_row:,})")


@data.command()
@click.argument("name")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--target", default=None,
              help="The column S and MS forecast and M puts last. Default: OT if the file has it, else the last "
                   "column.")
@click.option("--frequency", default=None,
              help="Sampling interval as a pandas alias (h, 15min, D); recorded for listings. Default: from the dates.")
@click.option("--date-column", default=DEFAULT_DATE_COLUMN, show_default=True,
              help="The column of timestamps; every other column is a numeric channel.")
@click.option("--split", "split", default="70/10/20", show_default=True,
              help="Train/val/test rule: percentages such as 70/10/20 (TSLib's Dataset_Custom) or 0.6,0.2,0.2, or "
                   "ett-hour / ett-minute (TSLib's 12/4/4 months of hourly / 15-minute rows).")
@click.option("--description", default="", help="One line shown by `mixbench data info`.")
@click.option("--force", is_flag=True, help="Replace a dataset you added before under the same name.")
def add(name: str, file: Path, target: str | None, frequency: str | None, date_column: str, split: str,
        description: str, force: bool) -> None:
    """Register your own CSV as dataset NAME for every command (train, search, benchmark, tables).

    The file needs a column of non-decreasing timestamps (`date`, or the one --date-column names) and numeric columns
    without gaps, as the built-in data. Its path, sha256, rows, channels, date column, target and split rule go to the
    user registry ($MIXBENCH_HOME/datasets.yaml, else ~/.config/mixbench/datasets.yaml); a later change to the file is
    refused until it is added again.

    \b
    Example:
      mixbench data add sales ./sales.csv --target units --split 60/20/20
      mixbench data add meter ./meter.csv --date-column timestamp
      mixbench train --model dlinear --dataset sales --pred-len 24 --seq-len 96
    """
    rule = parse_split_rule(split)
    parsed, sha256 = read_own_csv(file, date_column)
    spec = own_spec(name, file, parsed, sha256, split_rule=rule, target=target, frequency=frequency,
                    date_column=date_column, description=description)
    registry = add_user_dataset(spec, force=force)
    click.echo(f"added {spec.name}: {spec.path} ({spec.n_rows:,} rows, {spec.n_channels} channels, target "
               f"{spec.target}, frequency {spec.frequency}, {split_rule_label(rule)} split, dates in column "
               f"{spec.date_column!r}, sha256 {sha256[:12]}...) to {registry}")


@data.command()
@click.argument("name")
def remove(name: str) -> None:
    """Forget a dataset you added (its file is left where it is).

    \b
    Example:
      mixbench data remove sales
    """
    spec = remove_user_dataset(name)
    click.echo(f"removed {spec.name} ({spec.path}) from {user_registry_path()}")
