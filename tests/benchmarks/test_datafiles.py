"""Dataset files: the data dir, resolving a name to its checked file, checksums and their memo (one hash per file and
process), and downloads that never leave partial files.

Downloads run in subprocesses because huggingface_hub reads HF_ENDPOINT / HF_HUB_OFFLINE when it is imported. The
success and checksum-mismatch paths use a local HTTP server that answers like the Hub's `resolve` endpoint, since
huggingface.co is unreachable from the test machines.
"""
from __future__ import annotations

import hashlib
import http.server
import os
import pickle
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from benchmarks.data import files as datafiles
from benchmarks.data.files import DatasetFile, dataset_path, file_sha256, file_status, resolve_data_dir, resolve_dataset
from benchmarks.data.registry import get_dataset
from benchmarks.errors import DataError

REPO_ROOT = Path(__file__).resolve().parents[2]
ETTH1_SHA256 = "f18de3ad269cef59bb07b5438d79bb3042d3be49bdeecf01c1cd6d29695ee066"


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("MIXBENCH_CACHE_DIR", str(folder))
    return folder


def test_data_dir_is_argument_then_environment_then_dataset(monkeypatch, tmp_path):
    monkeypatch.setenv("MIXBENCH_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "given") == tmp_path / "given"
    assert resolve_data_dir(None) == tmp_path / "env"
    monkeypatch.delenv("MIXBENCH_DATA_DIR")
    assert resolve_data_dir(None) == Path("dataset")
    assert dataset_path(get_dataset("illness"), tmp_path) == tmp_path / "illness" / "national_illness.csv"


def test_sha256_of_the_shared_files_matches_the_registry(shared_data_dir):
    for name in ("weather", "ETTh1"):
        status = file_status(get_dataset(name), shared_data_dir)
        assert status.present and status.verified is True
        assert status.sha256 == get_dataset(name).sha256


def test_hash_memo_follows_size_and_mtime(tmp_path, private_cache):
    path = tmp_path / "file.csv"
    path.write_bytes(b"first")
    assert file_sha256(path) == hashlib.sha256(b"first").hexdigest()
    path.write_bytes(b"second, longer")
    assert file_sha256(path) == hashlib.sha256(b"second, longer").hexdigest()
    # a new process finds the hash on disk: the memo there is keyed by path, size and mtime
    datafiles._hash_memo.clear()
    remembered = list((private_cache / "sha256").iterdir())
    assert len(remembered) == 2
    assert file_sha256(path) == hashlib.sha256(b"second, longer").hexdigest()


def test_damaged_hash_memo_is_recomputed(tmp_path, private_cache):
    path = tmp_path / "file.csv"
    path.write_bytes(b"content")
    file_sha256(path)
    datafiles._hash_memo.clear()
    for entry in (private_cache / "sha256").iterdir():
        entry.write_text("not a hash")
    assert file_sha256(path) == hashlib.sha256(b"content").hexdigest()


def test_resolve_dataset_gives_the_registry_entry_absolute_path_and_hash(shared_data_dir):
    file = resolve_dataset("etth1", shared_data_dir)
    assert file == DatasetFile(spec=get_dataset("ETTh1"), path=shared_data_dir / "ETT-small" / "ETTh1.csv",
                               sha256=ETTH1_SHA256)
    assert (file.name, file.n_channels) == ("ETTh1", 7)
    assert pickle.loads(pickle.dumps(file)) == file


def test_resolved_path_is_absolute_for_a_relative_data_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rel" / "illness").mkdir(parents=True)
    (tmp_path / "rel" / "illness" / "national_illness.csv").write_text("date,OT\n2002-01-01,1\n")
    file = resolve_dataset("illness", "rel", verify=False)
    assert file.path.is_absolute() and file.path == tmp_path / "rel" / "illness" / "national_illness.csv"


def test_a_file_is_hashed_once_per_process(tmp_path, monkeypatch):
    path = tmp_path / "illness" / "national_illness.csv"
    path.parent.mkdir(parents=True)
    path.write_text("date,OT\n2002-01-01,1\n")
    hashed = []
    real_hash = datafiles._hash_contents
    monkeypatch.setattr(datafiles, "_hash_contents", lambda file: hashed.append(file) or real_hash(file))
    first = resolve_dataset("illness", tmp_path, verify=False)
    assert resolve_dataset("ILLNESS", tmp_path, verify=False) == first
    assert file_status(get_dataset("illness"), tmp_path).sha256 == first.sha256
    assert hashed == [path]


def test_known_hash_file_with_other_content_fails_verification(tmp_path):
    spec = get_dataset("ETTh1")
    path = dataset_path(spec, tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text("date,OT\n2016-07-01 00:00:00,1.0\n")
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(DataError) as error:
        resolve_dataset("ETTh1", tmp_path)
    message = str(error.value)
    assert actual in message and ETTH1_SHA256 in message and str(path) in message
    assert "mixbench data download ETTh1 --force" in message and message.endswith("turn verify off")
    assert error.value.setting == "verify" and "\n" not in message
    assert file_status(spec, tmp_path).verified is False
    assert resolve_dataset("ETTh1", tmp_path, verify=False) == DatasetFile(spec, path, actual)


def test_file_without_reference_hash_is_present_but_unverified(tmp_path):
    spec = get_dataset("illness")
    path = dataset_path(spec, tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text("date,OT\n2002-01-01,1\n")
    status = file_status(spec, tmp_path)
    assert status.present and status.verified is None
    with pytest.raises(DataError, match="has 1 rows and 1 channels but illness has 966 rows and 7 channels") as error:
        resolve_dataset("illness", tmp_path)
    assert error.value.setting == "verify" and "\n" not in str(error.value)
    assert resolve_dataset("illness", tmp_path, verify=False).path == path


def test_missing_file_without_download_names_the_path(tmp_path):
    with pytest.raises(DataError) as error:
        resolve_dataset("weather", tmp_path, download=False)
    message = str(error.value)
    assert str(tmp_path / "weather" / "weather.csv") in message
    assert "mixbench data download weather" in message
    assert error.value.setting == "data_dir" and "point data_dir at a folder" in message
    assert file_status(get_dataset("weather"), tmp_path).present is False


def test_unknown_dataset_names_the_setting(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'wheather'; did you mean 'weather'") as error:
        resolve_dataset("wheather", tmp_path)
    assert error.value.setting == "dataset"
    assert error.value.render(lambda setting: "--" + setting).startswith("unknown --dataset 'wheather'")


# --- downloads, in subprocesses ---------------------------------------------------------------------------------

class LocalHub(http.server.ThreadingHTTPServer):
    """Serves `files` (path in the TSLib dataset repo -> bytes) like huggingface.co/datasets/.../resolve/main/."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _HubHandler)
        self.files: dict[str, bytes] = {}

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _HubHandler(http.server.BaseHTTPRequestHandler):
    PREFIX = "/datasets/thuml/Time-Series-Library/resolve/main/"

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def _answer(self, send_body: bool) -> None:
        path = self.path.split("?")[0]
        body = self.server.files.get(path[len(self.PREFIX):]) if path.startswith(self.PREFIX) else None
        if body is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("X-Repo-Commit", "0" * 40)
        self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def local_hub():
    hub = LocalHub()
    thread = threading.Thread(target=hub.serve_forever, daemon=True)
    thread.start()
    yield hub
    hub.shutdown()
    hub.server_close()


def run_python(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "MIXBENCH_CACHE_DIR": str(tmp_path / "cache"), "HF_HOME": str(tmp_path / "hf"),
                   **env}
    environment.pop("MIXBENCH_DATA_DIR", None)
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=environment, capture_output=True, text=True,
                          timeout=300)


def files_under(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*")) if folder.exists() else []


def test_download_verifies_and_places_the_file(local_hub, tmp_path, shared_data_dir):
    local_hub.files["weather/weather.csv"] = (shared_data_dir / "weather" / "weather.csv").read_bytes()
    data_dir = tmp_path / "data"
    result = run_python(["-m", "cli", "data", "download", "weather", "--data-dir", str(data_dir)], tmp_path,
                        HF_ENDPOINT=local_hub.endpoint)
    assert result.returncode == 0, result.stderr
    assert "sha256 verified" in result.stdout
    assert files_under(data_dir) == ["weather", "weather/weather.csv"]
    assert hashlib.sha256((data_dir / "weather" / "weather.csv").read_bytes()).hexdigest() == \
        get_dataset("weather").sha256


def test_downloaded_file_with_wrong_sha256_is_not_kept(local_hub, tmp_path):
    tampered = b"date,OT\r\n2020-01-01 00:10:00,428.1\r\n"
    local_hub.files["ETT-small/ETTh1.csv"] = tampered
    data_dir = tmp_path / "data"
    (data_dir / "ETT-small").mkdir(parents=True)
    result = run_python(["-m", "cli", "data", "download", "ETTh1", "--data-dir", str(data_dir)], tmp_path,
                        HF_ENDPOINT=local_hub.endpoint)
    assert result.returncode == 2
    error_line = result.stderr.strip().splitlines()[-1]
    assert error_line.startswith("error: ")
    assert hashlib.sha256(tampered).hexdigest() in error_line and ETTH1_SHA256 in error_line
    assert "not kept" in error_line
    assert files_under(data_dir) == ["ETT-small"]


def test_missing_file_is_downloaded_when_loading(local_hub, tmp_path, shared_data_dir):
    local_hub.files["ETT-small/ETTh1.csv"] = (shared_data_dir / "ETT-small" / "ETTh1.csv").read_bytes()
    data_dir = tmp_path / "data"
    # the download is hashed once, before it is moved into place; resolving it again and loading it hash nothing
    script = ("from benchmarks.data import files; from benchmarks.data.protocol import load_forecast_data; "
              "hashed = []; real = files._hash_contents; "
              "files._hash_contents = lambda path: hashed.append(path) or real(path); "
              f"file = files.resolve_dataset('ETTh1', {str(data_dir)!r}); "
              f"assert files.resolve_dataset('etth1', {str(data_dir)!r}) == file; "
              "data = load_forecast_data(file); print(len(data.train), data.file.sha256, len(hashed))")
    result = run_python(["-c", script], tmp_path, HF_ENDPOINT=local_hub.endpoint)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["8449", ETTH1_SHA256, "1"]


def test_file_missing_on_the_hub_is_one_line_error_and_leaves_nothing(local_hub, tmp_path):
    data_dir = tmp_path / "data"
    result = run_python(["-m", "cli", "data", "download", "illness", "--data-dir", str(data_dir)], tmp_path,
                        HF_ENDPOINT=local_hub.endpoint)
    assert result.returncode == 2
    error_line = result.stderr.strip().splitlines()[-1]
    assert str(data_dir / "illness" / "national_illness.csv") in error_line
    assert "place national_illness.csv" in error_line
    assert files_under(data_dir) == []


def test_offline_download_is_one_line_error_naming_the_expected_path(tmp_path):
    data_dir = tmp_path / "data"
    script = f"from benchmarks.data.files import resolve_dataset; resolve_dataset('weather', {str(data_dir)!r})"
    result = run_python(["-m", "cli", "data", "download", "weather", "--data-dir", str(data_dir)], tmp_path,
                        HF_HUB_OFFLINE="1")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: downloading weather/weather.csv")
    assert str(data_dir / "weather" / "weather.csv") in result.stderr
    assert files_under(data_dir) == []
    library = run_python(["-c", script], tmp_path, HF_HUB_OFFLINE="1")
    assert "DataError" in library.stderr and str(data_dir / "weather" / "weather.csv") in library.stderr
    assert "point data_dir / MIXBENCH_DATA_DIR at a folder" in library.stderr
    assert files_under(data_dir) == []
