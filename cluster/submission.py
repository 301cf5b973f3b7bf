"""What `mixbench submit` sends to a cluster: the command, the code, the tracking server and the shared storage.

The job runs `python -m cli <command>` in the uploaded working directory, so the cluster runs exactly the code that
was submitted; its Python packages come from the cluster's image (or, with `pip=True`, from this project's own
requirements, installed by Ray into the job's environment).
"""
from __future__ import annotations

import importlib.metadata
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from benchmarks.errors import SettingError, TrackingError

# Tracking stores every node reaches over the network; anything else (sqlite, a file path, a database whose
# artifacts default to local disk) would scatter the runs over the nodes' disks.
REMOTE_TRACKING_SCHEMES = ("http", "https", "databricks")

# Never uploaded: environments, caches, local tracking stores and results, downloaded data.
WORKING_DIR_EXCLUDES = [
    ".git", ".venv", "__pycache__", ".pytest_cache", ".hypothesis", "*.egg-info",
    "mlruns", "mlartifacts", "mlflow.db", "ray_results", "dataset",
]

# Set by the cluster (its token, its address) or by the submission's own settings (tracking_uri); env may not
# override them.
RESERVED_ENV = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "RAY_ADDRESS", "MLFLOW_TRACKING_URI")

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A job's runtime environment is readable by anyone holding the cluster's token (`/api/jobs/`): names that look
# like they hold a secret are refused; the cluster-side ways are in docs/cluster.md ("Credentials").
SECRET_ENV_NAME = re.compile(r"PASSWORD|PASSWD|TOKEN|SECRET|KEY|CREDENTIAL|AUTH|PRIVATE", re.IGNORECASE)

# Flags of the submitted `mixbench` command (search, benchmark) that the submission reads or appends.
TRACKING_URI_FLAG = "--tracking-uri"
STORAGE_PATH_FLAG = "--storage-path"


@dataclass(frozen=True)
class Submission:
    """One `mixbench` command to run on a cluster; checks itself on creation (raises `SettingError`/`TrackingError`).

    command: the arguments after `--`, e.g. ("search", "--dataset", "weather").
    working_dir: the MixBench source root to upload (must hold cli.py).
    tracking_uri: the MLflow tracking server every trial logs to, e.g. "http://10.0.0.5:5000".
    storage_path: Ray Tune's storage on shared storage (s3://..., or a path mounted on every node); appended to
        the command as `--storage-path`. None leaves the command's own default (the head's local disk).
    env: extra environment variables for the job and all its trials.
    pip: install this project's requirements into the job's environment (for clusters whose image lacks them).
    allow_local_tracking: accept a tracking URI that lives on one machine's disk (single-node clusters only).
    """

    command: tuple[str, ...]
    working_dir: Path
    tracking_uri: str | None
    storage_path: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    pip: bool = False
    allow_local_tracking: bool = False

    def __post_init__(self) -> None:
        if not self.command:
            raise SettingError(
                "nothing to run: put the mixbench command after `--`, e.g. `-- search --dataset weather`"
            )
        if self.command[0] in ("submit", "jobs"):
            raise SettingError(f"`{self.command[0]}` runs on your machine, not on the cluster; submit e.g. `search`")
        if not (Path(self.working_dir) / "cli.py").is_file():
            raise SettingError(
                f"{{setting}} {self.working_dir}: not the MixBench source root (no cli.py there); "
                "run from the repository or pass its path", setting="working_dir"
            )
        if _has_flag(self.command, TRACKING_URI_FLAG):
            raise SettingError(
                "{setting}: give it to `mixbench submit` (before `--`); every trial gets it as MLFLOW_TRACKING_URI",
                setting="tracking_uri",
            )
        if self.storage_path is not None and _has_flag(self.command, STORAGE_PATH_FLAG):
            raise SettingError("{setting}: given twice, before and after `--`; keep one", setting="storage_path")
        for name in self.env:
            if not ENV_NAME.fullmatch(name):
                raise SettingError(f"{{setting}} {name}: not a variable name; write {{setting}} NAME=VALUE",
                                   setting="env")
            if name in RESERVED_ENV:
                raise SettingError(f"{{setting}} {name}: set by the cluster or from the submission's tracking URI; "
                                   "leave it out", setting="env")
            if SECRET_ENV_NAME.search(name):
                raise SettingError(f"{{setting}} {name}: looks like a secret, and a job's environment is readable by "
                                   "anyone with the cluster's token; set it on the cluster instead (a Kubernetes "
                                   "Secret or the nodes' environment, see docs/cluster.md)", setting="env")
        check_tracking_uri(self.tracking_uri, self.allow_local_tracking)

    @property
    def has_storage_path(self) -> bool:
        """Whether Ray Tune gets an explicit storage path (from submit's flag or the submitted command)."""
        return self.storage_path is not None or _has_flag(self.command, STORAGE_PATH_FLAG)

    def entrypoint(self) -> str:
        """The shell command the job runs on the head node."""
        command = list(self.command)
        if self.storage_path is not None:
            command += [STORAGE_PATH_FLAG, self.storage_path]
        return "python -m cli " + shlex.join(command)

    def runtime_env(self) -> dict:
        """Ray's runtime environment: the uploaded code, the tracking server and extra variables, maybe pip."""
        env_vars = {
            # The driver's stdout goes to a file; unbuffered, `--wait` shows progress as it happens.
            "PYTHONUNBUFFERED": "1",
            **self.env,
        }
        if self.tracking_uri is not None:
            env_vars["MLFLOW_TRACKING_URI"] = self.tracking_uri
        runtime_env: dict = {
            "working_dir": str(Path(self.working_dir).resolve()),
            "excludes": list(WORKING_DIR_EXCLUDES),
            "env_vars": env_vars,
        }
        if self.pip:
            runtime_env["pip"] = project_requirements()
        return runtime_env

    def metadata(self) -> dict[str, str]:
        """Labels stored with the job, shown by `mixbench jobs list`."""
        return {"submitted_by": "mixbench", "command": self.command[0]}


def check_tracking_uri(uri: str | None, allow_local: bool = False) -> None:
    """Refuses a tracking store that only one machine can write to, unless `allow_local`."""
    if uri and "@" in urlparse(uri).netloc:
        raise TrackingError(
            f"{{setting}} {_without_credentials(uri)}: holds credentials, which the job's record would show to anyone "
            "with the cluster's token; give the URL without them and set MLFLOW_TRACKING_USERNAME/PASSWORD on the "
            "cluster (see docs/cluster.md)", setting="tracking_uri")
    if allow_local:
        return
    if not uri:
        raise TrackingError(
            "{setting}: required in cluster mode; give the MLflow tracking server's URL "
            "(e.g. http://HEAD:5000, see docs/cluster.md), or allow local tracking on a one-node cluster",
            setting="tracking_uri",
        )
    scheme = urlparse(uri).scheme
    if scheme in REMOTE_TRACKING_SCHEMES or uri == "databricks":
        return
    # A one-letter scheme is a Windows drive, i.e. a local path.
    if scheme in ("", "file", "sqlite") or len(scheme) == 1:
        reason = "lives on one machine's disk, so trials on other nodes would log elsewhere"
    else:
        reason = "is a database, not a tracking server, so trial artifacts would land on each worker's disk"
    raise TrackingError(
        f"{{setting}} {_without_credentials(uri)}: {reason}; give the MLflow tracking server's URL "
        "(http://HOST:5000), or allow local tracking on a one-node cluster", setting="tracking_uri"
    )


def project_requirements() -> list[str]:
    """This project's runtime requirements from its installed metadata, without Ray (the cluster brings its own)."""
    try:
        requirements = importlib.metadata.requires("mixbench") or []
    except importlib.metadata.PackageNotFoundError:
        raise SettingError(
            "{setting}: mixbench is not installed here; run `pip install -e .` so its requirements are known",
            setting="pip",
        ) from None
    runtime = [r for r in requirements if "extra ==" not in r]
    # A second Ray inside the job's environment would not match the cluster's processes.
    return [r for r in runtime if re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0].lower() != "ray"]


def _has_flag(command: tuple[str, ...], flag: str) -> bool:
    return any(arg == flag or arg.startswith(flag + "=") for arg in command)


def _without_credentials(uri: str) -> str:
    parsed = urlparse(uri)
    if "@" not in parsed.netloc:
        return uri
    return parsed._replace(netloc="<redacted>@" + parsed.netloc.rpartition("@")[2]).geturl()
