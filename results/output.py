"""Where the results commands write: output files and folders checked before any work (one line, exit 2, for a
folder given as a file, a file given as a folder, a missing or unwritable folder, or an existing file without
`--force`), and every file written atomically (a temporary file in the same folder, then renamed over the target).
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from benchmarks.errors import ResultsError


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"^[+-]?\d+(\.\d+)?(e[+-]?\d+)?(±\d+(\.\d+)?)?%?$")


def csv_safe(text: str) -> str:
    """`text` as a CSV cell a spreadsheet shows as text: a cell that would start a formula (=, +, -, @, tab, CR) and
    is not one of our numbers gets a leading apostrophe, as OWASP advises against CSV injection."""
    return "'" + text if text.startswith(_FORMULA_START) and not _NUMBER.match(text) else text


def check_output_file(output: str, force: bool, option: str = "--output") -> Path:
    """The path `output` names, once it is sure a file can be written there.

    An existing file is replaced only with `force`; a symlink is then replaced as a link (the rename never writes
    through it), so nothing outside the target folder changes.
    """
    path = Path(output)
    if path.is_dir() and not path.is_symlink():
        raise ResultsError(f"{option} {output} is a folder; give a file name inside it, e.g. {path / 'table.tex'}")
    _check_folder_writable(path.parent, option, output)
    if path.is_symlink():
        if not force:
            raise ResultsError(f"{option} {output} is a symlink to {os.readlink(path)}; pass --force to replace the "
                               "link itself (its target is left alone), or pick another path")
    elif path.exists() and not force:
        raise ResultsError(f"{option} {output} exists; pass --force to replace it, or pick another path")
    return path


def check_output_folder(folder: str, force: bool, names: list[str], option: str) -> Path:
    """The folder `folder` names (created if missing), once it is sure the files `names` can be written into it."""
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise ResultsError(f"{option} {folder} is a file, not a folder; give a folder (it is created if missing)")
    if not path.exists():
        _check_folder_writable(path.parent, option, folder)
        try:
            path.mkdir()
        except OSError as error:
            raise ResultsError(f"{option} {folder}: cannot create the folder ({error.strerror})") from None
    _check_folder_writable(path, option, folder)
    existing = [name for name in names if (path / name).exists() or (path / name).is_symlink()]
    if existing and not force:
        raise ResultsError(f"{option} {folder} already holds {', '.join(existing)}; pass --force to replace them")
    return path


def _check_folder_writable(folder: Path, option: str, given: str) -> None:
    if folder.exists() and not folder.is_dir():
        raise ResultsError(f"{option} {given}: {folder} is a file, not a folder")
    if not folder.is_dir():
        raise ResultsError(f"{option} {given}: folder {folder} does not exist; create it or pick another path")
    # A real probe: os.access says yes to root on read-only mounts and /proc.
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError:
        raise ResultsError(f"{option} {given}: folder {folder} is not writable; pick another path") from None


def write_atomic(path: Path, data: str | bytes) -> Path:
    """Write `data` to `path` through a temporary file in the same folder renamed over it (a reader sees the old
    file or the new one, never half of it; a symlink at `path` is replaced, not followed)."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data.encode() if isinstance(data, str) else data)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
