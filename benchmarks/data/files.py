"""Dataset files on disk: the data dir, `resolve_dataset` (a name to its checked file, hashed once per process) and
downloads from the Time-Series-Library Hugging Face repo, moved into place only once their sha256 matches.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from benchmarks.data.csvcache import cache_dir, write_atomically
from benchmarks.data.registry import DatasetSpec, get_dataset
from benchmarks.errors import DataError

HF_REPO_ID = "thuml/Time-Series-Library"
HF_REPO_URL = f"https://huggingface.co/datasets/{HF_REPO_ID}"
DEFAULT_DATA_DIR = Path("dataset")

_log = logging.getLogger(__name__)
_hash_memo: dict[tuple[str, int, int], str] = {}


@dataclass(frozen=True)
class DatasetFile:
    """A registered dataset's CSV, found and checked once: registry entry, absolute path and sha256."""

    spec: DatasetSpec    # the registry entry; spec.name is the canonical spelling, e.g. "ETTh1"
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
    """Where `spec`'s file lies in the data dir (TSLib layout), present or not."""
    return resolve_data_dir(data_dir) / spec.path


def resolve_dataset(name: str, data_dir: str | os.PathLike | None = None, *, download: bool = True,
                    verify: bool = True) -> DatasetFile:
    """The registered dataset `name` (any case) as its checked file in the data dir.

    A missing file is downloaded unless `download=False`; `verify=False` accepts a file whose sha256 differs from
    the registry's (a modified or custom copy). The hash is computed at most once per file and process.
    """
    spec = get_dataset(name)
    path = dataset_path(spec, data_dir).resolve()
    if not path.is_file():
        if not download:
            raise DataError(f"{path} is missing; run `mixbench data download {spec.name}`, place "
                            f"{path.name} there, or point {{setting}} at a folder that holds it", setting="data_dir")
        download_file(spec, data_dir)
    sha256 = file_sha256(path)
    if verify and spec.sha256 is not None and sha256 != spec.sha256:
        raise DataError(f"{path} has sha256 {sha256} but {spec.name} should have {spec.sha256}; replace it with the "
                        f"original (`mixbench data download {spec.name} --force`) or, to use this copy as it is, "
                        "turn {setting} off", setting="verify")
    return DatasetFile(spec=spec, path=path, sha256=sha256)


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
