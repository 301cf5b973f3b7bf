"""What `--resume` trusts in an experiment folder: the files Tune unpickles on restore (tuner.pkl, experiment and
searcher state), checked against the sha256 digests the search recorded beside them, owned by this user and
writable by nobody else. Anything else (planted, damaged, changed since) is refused before Ray reads it.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from ray import tune

from benchmarks.errors import SettingError

DIGEST_FILE = "mixbench_digests.json"
# Tune's restore reads the folder's top-level .pkl and .json files (tuner.pkl, experiment_state-*.json with pickled
# trials, searcher-state-*.pkl, ...); trial checkpoints are loaded with torch's weights_only and need no record.
_GUARDED_SUFFIXES = (".pkl", ".json")


def guarded_files(experiment_dir: Path) -> list[Path]:
    """The experiment folder's files that a resume would unpickle or read, the digest file excluded."""
    return sorted(path for path in experiment_dir.iterdir()
                  if path.suffix in _GUARDED_SUFFIXES and path.name != DIGEST_FILE and not path.is_dir())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def record_digests(experiment_dir: Path) -> None:
    """Write the digests of the guarded files (owner-only, atomically) for the next `--resume` to check."""
    if not experiment_dir.is_dir():
        return
    digests = {path.name: _sha256(path) for path in guarded_files(experiment_dir)}
    descriptor, temporary = tempfile.mkstemp(dir=experiment_dir, prefix=f".{DIGEST_FILE}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w") as handle:
            json.dump(digests, handle, indent=1)
        os.replace(temporary, experiment_dir / DIGEST_FILE)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def check_before_restore(experiment_dir: Path, plain: tuple[str, ...] = ()) -> None:
    """Raise SettingError (one line, how to start afresh) unless every guarded file is as the search recorded it.

    `plain`: files read as plain JSON (no code can run from them); a folder holding nothing else needs no record
    (a search stopped before Tune first saved).
    """
    if not (experiment_dir / DIGEST_FILE).exists() and all(
            path.name in plain for path in guarded_files(experiment_dir)):
        return
    problem = _problem(experiment_dir)
    if problem is not None:
        raise SettingError(f"cannot resume {experiment_dir}: {problem}; Tune would unpickle (run) these files, so "
                           "they are not read. Start afresh with another {setting}, or move the folder away",
                           setting="name")


def _problem(experiment_dir: Path) -> str | None:
    record = experiment_dir / DIGEST_FILE
    if not record.exists():
        return (f"{DIGEST_FILE} is missing, so nothing shows the search wrote these files (a search killed before "
                "its first save, or a folder from elsewhere)")
    for path in (experiment_dir, record):
        unsafe = _unsafe(path)
        if unsafe:
            return unsafe
    try:
        recorded: dict[str, Any] = json.loads(record.read_text())
    except (OSError, ValueError) as error:
        return f"{DIGEST_FILE} is unreadable ({type(error).__name__})"
    present = {path.name: path for path in guarded_files(experiment_dir)}
    unknown = sorted(set(present) - set(recorded))
    if unknown:
        return f"{unknown[0]} was not written by the search"
    for name, expected in recorded.items():
        path = present.get(name)
        if path is None:
            return f"{name} is missing"
        unsafe = _unsafe(path)
        if unsafe:
            return unsafe
        if _sha256(path) != expected:
            return (f"{name} changed after the search last recorded it (damaged or replaced, or the driver was "
                    "killed at the moment Tune saved it)")
    return None


def _unsafe(path: Path) -> str | None:
    """Why `path` cannot be trusted as this user's own (a link, another owner, writable by group or others)."""
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode):
        return f"{path.name} is a symbolic link"
    if info.st_uid != os.getuid():
        return f"{path.name} belongs to another user (uid {info.st_uid})"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{path.name} is writable by other users (mode {stat.S_IMODE(info.st_mode):o})"
    return None


class DigestKeeper(tune.Callback):
    """Records the digests after every Tune step whose save changed a guarded file, so a driver killed at any time
    leaves a record that matches (except in the instant between Tune's save and this callback)."""

    def __init__(self, experiment_dir: str) -> None:
        self.experiment_dir = experiment_dir
        self._seen: dict[str, tuple[int, int]] = {}

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        folder = Path(self.experiment_dir)
        if not folder.is_dir():
            return
        try:
            seen = {path.name: (path.stat().st_mtime_ns, path.stat().st_size) for path in guarded_files(folder)}
        except OSError:  # Tune replaced a state file between the listing and the stat: the next step records it
            return
        if seen != self._seen:
            record_digests(folder)
            self._seen = seen
