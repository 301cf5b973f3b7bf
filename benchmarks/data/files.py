"""Dataset files on disk: the data dir, `resolve_dataset` (a name or a CSV path to its checked file, hashed once per
process), the shape of own and unhashed files, and downloads from the Time-Series-Library Hugging Face repo, moved
into place only once their sha256 matches.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.data.csvcache import ParsedCSV, cache_dir, load_csv, write_atomically
from benchmarks.data.registry import (
    DEFAULT_DATE_COLUMN,
    DEFAULT_SPLIT_RULE,
    DatasetSpec,
    all_datasets,
    get_dataset,
    split_rule_label,
)
from benchmarks.errors import DataError

HF_REPO_ID = "thuml/Time-Series-Library"
HF_REPO_URL = f"https://huggingface.co/datasets/{HF_REPO_ID}"
DEFAULT_DATA_DIR = Path("dataset")

_log = logging.getLogger(__name__)
_hash_memo: dict[tuple[str, int, int], str] = {}
_shape_memo: dict[str, tuple[int, int]] = {}


@dataclass(frozen=True)
class DatasetFile:
    """A dataset's CSV, found and checked once: registry entry, absolute path and sha256."""

    spec: DatasetSpec    # the registry entry (or, for `--dataset FILE.csv`, one made from the file); spec.name is the
                         # canonical spelling, e.g. "ETTh1", and the `dataset` tag of every run
    path: Path           # absolute
    sha256: str          # of the file at `path`

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def n_channels(self) -> int:
        return self.spec.n_channels


@dataclass(frozen=True)
class FileStatus:
    """Where a dataset's file is expected and what is known about the copy there."""

    path: Path
    present: bool
    sha256: str | None       # of the file on disk; None when absent
    verified: bool | None    # True/False against the registry; None when absent or no reference hash exists


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """`data_dir` if given, else $MIXBENCH_DATA_DIR, else ./dataset."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    if os.environ.get("MIXBENCH_DATA_DIR"):
        return Path(os.environ["MIXBENCH_DATA_DIR"]).expanduser()
    return DEFAULT_DATA_DIR


def dataset_path(spec: DatasetSpec, data_dir: str | os.PathLike | None = None) -> Path:
    """Where `spec`'s file lies: in the data dir (TSLib layout) for a built-in dataset, its own path for own data."""
    if spec.is_own:
        return Path(spec.path)
    return resolve_data_dir(data_dir) / spec.path


def is_csv_path(name: str) -> bool:
    """Whether a `--dataset` value names a file rather than a registered dataset."""
    return str(name).lower().endswith(".csv") or os.sep in str(name) or "/" in str(name)


def resolve_dataset(name: str, data_dir: str | os.PathLike | None = None, *, download: bool = True,
                    verify: bool = True) -> DatasetFile:
    """The dataset `name` (a registered name in any case, or the path of a CSV) as its checked file.

    A missing built-in file is downloaded unless `download=False`; `verify=False` accepts a file whose sha256 differs
    from the registry's (a modified or custom copy). A registered file without a reference hash must have the
    registry's rows and channels. A CSV path is read with the 70/10/20 split, which is said once on stderr. The hash
    is computed at most once per file and process.
    """
    if is_csv_path(name):
        return _direct_file(Path(name).expanduser())
    spec = get_dataset(name)
    path = dataset_path(spec, data_dir).resolve()
    if spec.is_own and not path.is_file():
        raise DataError(f"{spec.name} was added from {path}, which is gone; put the file back or add it again with "
                        f"`mixbench data add {spec.name} FILE.csv --force`", setting="dataset")
    if not path.is_file():
        if not download:
            raise DataError(f"{path} is missing; run `mixbench data download {spec.name}`, place "
                            f"{path.name} there, or point {{setting}} at a folder that holds it", setting="data_dir")
        download_file(spec, data_dir)
    sha256 = file_sha256(path)
    if verify and spec.sha256 is not None and sha256 != spec.sha256:
        if spec.is_own:
            raise DataError(f"{path} changed since it was added as {spec.name} (sha256 {sha256[:12]}... not "
                            f"{spec.sha256[:12]}...); add it again with `mixbench data add {spec.name} {path} "
                            "--force`", setting="dataset")
        raise DataError(f"{path} has sha256 {sha256} but {spec.name} should have {spec.sha256}; replace it with the "
                        f"original (`mixbench data download {spec.name} --force`) or, to use this copy as it is, "
                        "turn {setting} off", setting="verify")
    if verify and spec.sha256 is None:
        rows, channels = csv_shape(path, sha256)
        if (rows, channels) != (spec.n_rows, spec.n_channels):
            raise DataError(f"{path} has {rows:,} rows and {channels:,} channels but {spec.name} has "
                            f"{spec.n_rows:,} rows and {spec.n_channels:,} channels: it is another file; put the "
                            f"original there (`mixbench data download {spec.name} --force`), add yours under its own "
                            "name (`mixbench data add NAME FILE.csv`), or turn {setting} off", setting="verify")
    return DatasetFile(spec=spec, path=path, sha256=sha256)


def read_own_csv(path: Path, date_column: str = DEFAULT_DATE_COLUMN) -> tuple[ParsedCSV, str]:
    """(parsed contents, sha256) of an own CSV with its timestamps in `date_column`, with the same checks as built-in
    data (dates, NaN, shape); a `date_column` other than `date` that the file lacks is a DataError naming that
    setting."""
    path = path.expanduser().resolve()
    sha256 = _own_file_sha256(path, setting=None)
    return load_csv(path, sha256, date_column), sha256


def _own_file_sha256(path: Path, *, setting: str | None = "dataset") -> str:
    """The sha256 of an own CSV, which must exist; `setting` names what gave the path (None: the file itself)."""
    given = "{setting} " if setting else "the file "
    if not path.exists():
        hint = "; give the path of a CSV or a registered name (`mixbench data list`)" if setting else ""
        raise DataError(f"{given}{path} does not exist{hint}", setting=setting)
    if not path.is_file():
        raise DataError(f"{given}{path} is not a file; give the path of a CSV", setting=setting)
    return file_sha256(path)


def own_spec(name: str, path: Path, parsed: ParsedCSV, sha256: str, *, split_rule: str = DEFAULT_SPLIT_RULE,
             target: str | None = None, frequency: str | None = None, date_column: str = DEFAULT_DATE_COLUMN,
             source: str = "user", description: str = "") -> DatasetSpec:
    """The registry entry of an own CSV already read by `read_own_csv`; the target defaults to OT if the file has
    one, else its last column (TSLib's Dataset_Custom forecasts the last column under MS); `date_column` is the one the
    file was read with."""
    if target is None:
        target = "OT" if "OT" in parsed.columns else parsed.columns[-1]
    if target not in parsed.columns:
        listed = ", ".join(repr(column) for column in parsed.columns[:8])
        raise DataError(f"{{setting}} {target!r} is not a column of {path} (columns: {listed}"
                        f"{', ...' if len(parsed.columns) > 8 else ''})", setting="target")
    return DatasetSpec(name=name, path=str(path.expanduser().resolve()), n_channels=len(parsed.columns),
                       n_rows=parsed.n_rows, frequency=frequency or _guess_frequency(parsed), split_rule=split_rule,
                       sha256=sha256, description=description or f"own data from {path.name}", target=target,
                       date_column=date_column, source=source)  # type: ignore[arg-type]


def csv_shape(path: Path, sha256: str) -> tuple[int, int]:
    """(data rows, value columns) of a CSV, from its header and line count (no parsing); remembered per sha256."""
    if sha256 not in _shape_memo:
        with path.open("rb") as handle:
            header = handle.readline()
            rows = 0
            last = b"\n"
            for block in iter(lambda: handle.read(1 << 20), b""):
                rows += block.count(b"\n")
                last = block[-1:]
        if last != b"\n":
            rows += 1  # a last line without a newline is still a row
        _shape_memo[sha256] = (rows, len(header.decode("utf-8", "replace").split(",")) - 1)
    return _shape_memo[sha256]


def _direct_file(path: Path) -> DatasetFile:
    """`--dataset FILE.csv`: the file under the 70/10/20 rule, named after its stem (a registered dataset's own file
    keeps its registry entry, so results are never labelled with a name that means other data)."""
    resolved = path.expanduser().resolve()
    sha256 = _own_file_sha256(resolved)
    for spec in all_datasets().values():
        if spec.sha256 == sha256:
            # matched before parsing: an added file may keep its dates in a column other than `date`
            load_csv(resolved, sha256, spec.date_column)
            return DatasetFile(spec=spec, path=resolved, sha256=sha256)
    parsed = load_csv(resolved, sha256)
    name = resolved.stem
    if name.lower() in {registered.lower() for registered in all_datasets()}:
        raise DataError(f"{resolved} is named like the registered dataset {name!r} but holds other data; add it "
                        "under its own name with `mixbench data add NAME FILE.csv` and pass that name as {setting}",
                        setting="dataset")
    spec = own_spec(name, resolved, parsed, sha256, source="file", description=f"the file {resolved}")
    print(f"dataset {name}: {resolved} ({spec.n_rows:,} rows, {spec.n_channels} channels, target {spec.target}) with "
          f"the {split_rule_label(spec.split_rule)} train/val/test split; `mixbench data add` records another rule",
          file=sys.stderr)
    return DatasetFile(spec=spec, path=resolved, sha256=sha256)


def _guess_frequency(parsed: ParsedCSV) -> str:
    """The most common step between dates as a pandas alias ('h', '10min', 'D'), or '?' for fewer than two rows."""
    steps = np.diff(parsed.dates[:101].astype("int64"))
    if len(steps) == 0:
        return "?"
    values, counts = np.unique(steps, return_counts=True)
    seconds = int(values[counts.argmax()]) // 1_000_000_000
    for unit, size in (("W", 604_800), ("D", 86_400), ("h", 3_600), ("min", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            count = seconds // size
            return unit if count == 1 else f"{count}{unit}"
    return "?"


def file_sha256(path: Path) -> str:
    """The sha256 of `path`, remembered (in memory and in the cache dir) by path, size and modification time."""
    key = _hash_key(path)
    if key in _hash_memo:
        return _hash_memo[key]
    try:
        remembered = _hash_entry(key).read_text().strip()
    except OSError:
        remembered = ""
    if len(remembered) == 64 and all(character in "0123456789abcdef" for character in remembered):
        _hash_memo[key] = remembered
        return remembered
    sha256 = _hash_contents(path)
    _remember(key, sha256)
    return sha256


def _hash_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def _hash_entry(key: tuple[str, int, int]) -> Path:
    return cache_dir() / "sha256" / (hashlib.sha256(json.dumps(key).encode()).hexdigest()[:40] + ".txt")


def _remember(key: tuple[str, int, int], sha256: str) -> None:
    _hash_memo[key] = sha256
    try:
        write_atomically(_hash_entry(key), lambda handle: handle.write(sha256.encode()))
    except OSError:
        pass  # remembering the hash only saves time; the in-memory memo still serves this process


def _hash_contents(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_status(spec: DatasetSpec, data_dir: str | os.PathLike | None = None) -> FileStatus:
    """Whether `spec`'s file is in the data dir and whether it matches the registry's sha256."""
    path = dataset_path(spec, data_dir)
    if not path.is_file():
        return FileStatus(path=path, present=False, sha256=None, verified=None)
    sha256 = file_sha256(path)
    verified = None if spec.sha256 is None else sha256 == spec.sha256
    return FileStatus(path=path, present=True, sha256=sha256, verified=verified)


def download_file(spec: DatasetSpec, data_dir: str | os.PathLike | None = None) -> Path:
    """Download `spec`'s file from the TSLib Hugging Face dataset repo into the data dir, replacing any copy there.

    The file is checked against the registry's sha256 before it is moved into place; on any failure no file is left.
    """
    # Imported here: it adds ~0.1 s to every command that finds datasets (measured), and only a download needs it.
    from huggingface_hub import hf_hub_download

    destination = dataset_path(spec, data_dir)
    placement = (f"place {Path(spec.path).name} from {HF_REPO_URL} (or the TSLib Google Drive) at {destination}, "
                 "or point {setting} / MIXBENCH_DATA_DIR at a folder that holds it")
    created_folder = not destination.parent.exists()
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".{destination.name}.download-"))
    except OSError as error:
        raise DataError(f"cannot write {destination} ({error.strerror or error}); {placement}",
                        setting="data_dir") from None
    kept = False
    try:
        _log.info("downloading %s from %s", spec.path, HF_REPO_URL)
        # huggingface_hub logs a warning per retry of an unreachable hub; the DataError below says it once.
        hub_log = logging.getLogger("huggingface_hub")
        hub_level = hub_log.level
        hub_log.setLevel(logging.ERROR)
        try:
            downloaded = Path(hf_hub_download(repo_id=HF_REPO_ID, filename=spec.path, repo_type="dataset",
                                              local_dir=staging))
        except Exception as error:  # offline, unreachable, not found, HTTP errors: all leave nothing behind
            reason = " ".join(str(error).split())[:200]
            raise DataError(f"downloading {spec.path} from {HF_REPO_URL} to {destination} failed "
                            f"({type(error).__name__}: {reason}); {placement}", setting="data_dir") from None
        finally:
            hub_log.setLevel(hub_level)
        sha256 = _hash_contents(downloaded)
        if spec.sha256 is not None and sha256 != spec.sha256:
            raise DataError(f"the downloaded {spec.path} has sha256 {sha256} but {spec.name} should have "
                            f"{spec.sha256}; the file was not kept: retry later, or {placement}", setting="data_dir")
        os.replace(downloaded, destination)
        kept = True
        _remember(_hash_key(destination), sha256)  # a rename keeps size and mtime: the next lookup needs no hash
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created_folder and not kept:
            try:
                destination.parent.rmdir()  # only while empty: another download may be filling it too
            except OSError:
                pass
    return destination
