"""The registry of datasets: the Time-Series-Library benchmarks built in, plus the user's own CSVs recorded by
`mixbench data add` in a user registry file; where each file lies, its shape, checksum and split rule.

Split rules mirror TSLib data_provider/data_loader.py: Dataset_ETT_hour, Dataset_ETT_minute and Dataset_Custom
(70/10/20, or another train/val/test ratio for own data).
"""
from __future__ import annotations

import difflib
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from benchmarks.errors import DataError

SplitRule = str  # "ett_hour", "ett_minute" or "ratio_<train>_<val>_<test>" in whole percent, e.g. "ratio_70_10_20"
SPLIT_NAMES = ("train", "val", "test")
DEFAULT_SPLIT_RULE = "ratio_70_10_20"
DEFAULT_DATE_COLUMN = "date"  # TSLib's: every built-in file and every CSV given directly as `--dataset FILE.csv`
USER_REGISTRY_ENV = "MIXBENCH_HOME"
_RATIO_RULE = re.compile(r"ratio_(\d{1,2})_(\d{1,2})_(\d{1,2})")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: a built-in benchmark in the Time-Series-Library layout, or the user's own CSV."""

    name: str
    path: str                # built-in: relative to the data dir (and the Hugging Face repo); own data: absolute
    n_channels: int          # value columns besides the date column
    n_rows: int              # data rows (without the header)
    frequency: str           # sampling interval of the rows (pandas alias)
    split_rule: SplitRule
    sha256: str | None       # of the file as distributed or added; None where no reference hash is recorded
    description: str
    target: str = "OT"       # the column S/MS forecast and M puts last
    date_column: str = DEFAULT_DATE_COLUMN   # the column of timestamps; only own data added with another differs
    source: Literal["builtin", "user", "file"] = "builtin"   # user: `mixbench data add`; file: `--dataset FILE.csv`

    @property
    def column_order(self) -> Literal["file", "target_last"]:
        """TSLib's ETT loaders keep the file's column order; Dataset_Custom moves the target column last."""
        return "file" if self.split_rule in ("ett_hour", "ett_minute") else "target_last"

    @property
    def is_own(self) -> bool:
        """True for the user's own data (added or given as a file), whose path is absolute."""
        return self.source != "builtin"


_SPECS = (
    DatasetSpec("weather", "weather/weather.csv", 21, 52_696, "10min", "ratio_70_10_20",
                "34ee981d07313e51da2a50bb600072c8ae4a69cb4b0651f4cb93a069d7a2ba63",
                "Jena weather station, 2020, 10-minute readings"),
    DatasetSpec("ETTh1", "ETT-small/ETTh1.csv", 7, 17_420, "h", "ett_hour",
                "f18de3ad269cef59bb07b5438d79bb3042d3be49bdeecf01c1cd6d29695ee066",
                "electricity transformer 1, hourly"),
    DatasetSpec("ETTh2", "ETT-small/ETTh2.csv", 7, 17_420, "h", "ett_hour", None,
                "electricity transformer 2, hourly"),
    DatasetSpec("ETTm1", "ETT-small/ETTm1.csv", 7, 69_680, "15min", "ett_minute", None,
                "electricity transformer 1, 15-minute"),
    DatasetSpec("ETTm2", "ETT-small/ETTm2.csv", 7, 69_680, "15min", "ett_minute", None,
                "electricity transformer 2, 15-minute"),
    DatasetSpec("electricity", "electricity/electricity.csv", 321, 26_304, "h", "ratio_70_10_20", None,
                "hourly consumption of 321 clients"),
    DatasetSpec("traffic", "traffic/traffic.csv", 862, 17_544, "h", "ratio_70_10_20", None,
                "hourly road occupancy of 862 San Francisco sensors"),
    DatasetSpec("exchange_rate", "exchange_rate/exchange_rate.csv", 8, 7_588, "D", "ratio_70_10_20", None,
                "daily exchange rates of 8 countries"),
    DatasetSpec("illness", "illness/national_illness.csv", 7, 966, "W", "ratio_70_10_20", None,
                "weekly influenza-like illness, US CDC"),
)
DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in _SPECS}



def split_rule_label(rule: SplitRule) -> str:
    """How a split rule reads in listings: "ETT 12/4/4 months" or "70/10/20"."""
    if rule in ("ett_hour", "ett_minute"):
        return "ETT 12/4/4 months"
    return "/".join(str(part) for part in split_ratios(rule))


def split_ratios(rule: SplitRule) -> tuple[int, int, int]:
    """(train, val, test) whole percentages of a ratio rule; a malformed rule is a DataError."""
    match = _RATIO_RULE.fullmatch(str(rule))
    if match is None:
        raise DataError(f"{{setting}} {rule!r} is not a split rule; use ett_hour, ett_minute or ratio_<train>_<val>_"
                        "<test> in whole percent, e.g. ratio_70_10_20", setting="split")
    parts = tuple(int(part) for part in match.groups())
    if sum(parts) != 100 or min(parts) <= 0:
        raise DataError(f"{{setting}} {rule!r}: train/val/test percentages must each be positive and add up to 100",
                        setting="split")
    return parts  # type: ignore[return-value]


def parse_split_rule(text: str) -> SplitRule:
    """A split rule from how a user writes it: `70/10/20`, `0.6,0.2,0.2`, `ett-hour`, `ett_minute`, `ratio_70_10_20`."""
    cleaned = str(text).strip().lower().replace("-", "_")
    if cleaned in ("ett_hour", "ett_minute"):
        return cleaned
    if _RATIO_RULE.fullmatch(cleaned):
        split_ratios(cleaned)
        return cleaned
    parts = [part for part in re.split(r"[/,:\s]+", cleaned) if part]
    try:
        numbers = [float(part) for part in parts]
    except ValueError:
        numbers = []
    if len(numbers) != 3:
        raise DataError(f"{{setting}} {text!r} is not a split rule; use 70/10/20 (train/val/test percent), "
                        "0.7,0.1,0.2, ett-hour or ett-minute", setting="split")
    scale = 100.0 if sum(numbers) <= 1.0 + 1e-9 else 1.0
    percent = [round(number * scale) for number in numbers]
    if any(abs(number * scale - whole) > 1e-6 for number, whole in zip(numbers, percent)):
        raise DataError(f"{{setting}} {text!r}: give whole percentages, e.g. 60/20/20", setting="split")
    rule = "ratio_{}_{}_{}".format(*percent)
    split_ratios(rule)
    return rule


def user_registry_path() -> Path:
    """The user's dataset registry: $MIXBENCH_HOME/datasets.yaml, else $XDG_CONFIG_HOME/mixbench/datasets.yaml, else
    ~/.config/mixbench/datasets.yaml (present or not)."""
    if os.environ.get(USER_REGISTRY_ENV):
        return Path(os.environ[USER_REGISTRY_ENV]).expanduser() / "datasets.yaml"
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base).expanduser() / "mixbench" / "datasets.yaml"


def user_datasets() -> dict[str, DatasetSpec]:
    """The datasets the user added with `mixbench data add`, read from the user registry (empty when it is absent)."""
    path = user_registry_path()
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise DataError(f"the user dataset registry {path} cannot be read ({error}); fix or delete it") from None
    entries = data.get("datasets") if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        raise DataError(f"the user dataset registry {path} must map `datasets:` to entries; fix or delete it")
    specs = {}
    for name, entry in entries.items():
        try:
            specs[str(name)] = DatasetSpec(name=str(name), source="user", **entry)
        except TypeError as error:
            raise DataError(f"the user dataset registry {path}: entry {name!r} is malformed ({error}); add it again "
                            "with `mixbench data add --force`") from None
    return specs


def all_datasets() -> dict[str, DatasetSpec]:
    """Built-in datasets then the user's own, by name."""
    return {**DATASETS, **user_datasets()}


def add_user_dataset(spec: DatasetSpec, *, force: bool = False) -> Path:
    """Record `spec` (source "user", absolute path) in the user registry; returns the registry file.

    A name that is built in is refused; a name already added is refused unless `force` replaces it.
    """
    if not _NAME.fullmatch(spec.name):
        raise DataError(f"{{setting}} {spec.name!r} must start with a letter or digit and hold only letters, digits, "
                        "'_', '.' or '-'", setting="name")
    if spec.name.lower() in {name.lower() for name in DATASETS}:
        raise DataError(f"{{setting}} {spec.name!r} is a built-in dataset; give your data another name",
                        setting="name")
    existing = user_datasets()
    clash = next((name for name in existing if name.lower() == spec.name.lower()), None)
    if clash is not None and not force:
        raise DataError(f"{{setting}} {clash!r} is already added ({existing[clash].path}); pass --force to replace it",
                        setting="name")
    entries = {name: _entry(other) for name, other in existing.items() if name != clash}
    entries[spec.name] = _entry(spec)
    return _write_registry(entries)


def remove_user_dataset(name: str) -> DatasetSpec:
    """Forget the added dataset `name` (its file stays where it is); returns what it was."""
    existing = user_datasets()
    match = next((spec for key, spec in existing.items() if key.lower() == str(name).lower()), None)
    if match is None:
        raise DataError(f"{{setting}} {name!r} is not an added dataset; `mixbench data list` shows them",
                        setting="name")
    _write_registry({key: _entry(spec) for key, spec in existing.items() if key != match.name})
    return match


def _entry(spec: DatasetSpec) -> dict[str, Any]:
    entry = asdict(spec)
    del entry["name"], entry["source"]
    return entry


def _write_registry(entries: dict[str, dict[str, Any]]) -> Path:
    path = user_registry_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(yaml.safe_dump({"datasets": entries}, sort_keys=False))
    os.replace(temporary, path)  # a reader never sees half a registry
    return path


def get_dataset(name: str) -> DatasetSpec:
    """The registered dataset called `name`, in any case, built in or added by the user: the one place dataset names
    are matched.

    An unknown name raises DataError suggesting the closest registered one.
    """
    registered = all_datasets()
    by_lower = {key.lower(): spec for key, spec in registered.items()}
    spec = by_lower.get(str(name).strip().lower())
    if spec is not None:
        return spec
    close = difflib.get_close_matches(str(name).lower(), list(by_lower), n=1, cutoff=0.0)
    suggestion = f"did you mean {by_lower[close[0]].name!r}? " if close else ""
    raise DataError(f"unknown {{setting}} {name!r}; {suggestion}known datasets: {', '.join(registered)}; a CSV of "
                    "your own: pass its path, or register it with `mixbench data add NAME FILE.csv`",
                    setting="dataset")


def split_bounds(rule: SplitRule, n_rows: int, seq_len: int) -> dict[str, tuple[int, int]]:
    """Row ranges [start, end) of train/val/test, exactly TSLib's border1s/border2s.

    Val and test start `seq_len` rows before their border so that their first window's forecast starts on it. A ratio
    rule computes TSLib's Dataset_Custom borders with its own percentages (70/10/20 gives TSLib's exactly:
    70 / 100 is the same float as 0.7).
    """
    if rule in ("ett_hour", "ett_minute"):
        month = 30 * 24 * (4 if rule == "ett_minute" else 1)
        border1s = [0, 12 * month - seq_len, 12 * month + 4 * month - seq_len]
        border2s = [12 * month, 12 * month + 4 * month, 12 * month + 8 * month]
    else:
        train, _, test = split_ratios(rule)
        num_train = int(n_rows * (train / 100))
        num_test = int(n_rows * (test / 100))
        num_vali = n_rows - num_train - num_test
        border1s = [0, num_train - seq_len, n_rows - num_test - seq_len]
        border2s = [num_train, num_train + num_vali, n_rows]
    return {split: (border1s[i], border2s[i]) for i, split in enumerate(SPLIT_NAMES)}
