"""A Ray cluster's job server as MixBench uses it: connect with the cluster's auth token, submit, watch, stop.

Every failure comes back as one line: bad input (address, token, job id) as `ClusterError` (exit 2), a cluster that
stops answering as `ClusterLostError` (exit 4). The token is sent as a bearer header and never printed.

Ray's job client and aiohttp load when a cluster is contacted, not when `mixbench submit --help` imports this module:
they would take that import from about 0.08 s to 0.4 s.
"""
from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import requests

from benchmarks.errors import ClusterError

CONNECT_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 1.0

# `mixbench submit --wait` and `mixbench jobs logs --follow` exit with these; 2 is bad input, 4 a silent cluster.
EXIT_CODES = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 3}
EXIT_CLUSTER_ERROR = 4


class ClusterLostError(ClusterError):
    """The cluster could not answer or act (not bad input); the CLI prints the one-line message and exits 4."""

    exit_code = EXIT_CLUSTER_ERROR


def read_token(token_file: Path | None = None) -> str | None:
    """The cluster's auth token: `token_file` if given, else `$RAY_AUTH_TOKEN`, else None (a cluster without tokens).

    Never the local Ray session's token (~/.ray/auth_token, or $RAY_AUTH_TOKEN_PATH that Ray's local runtime reads):
    a token for this machine's runtime must not be sent to another address.
    """
    if token_file is None:
        return os.environ.get("RAY_AUTH_TOKEN", "").strip() or None
    try:
        token = Path(token_file).expanduser().read_text().strip()
    except OSError:
        raise ClusterError(f"{{setting}} {token_file}: cannot read it; give the file with the cluster's token",
                           setting="token_file") from None
    if not token:
        raise ClusterError(f"{{setting}} {token_file}: the file is empty; write the cluster's token into it",
                           setting="token_file")
    return token


def check_address(address: str) -> str:
    """The dashboard URL without a trailing slash; refuses anything but http(s)://HOST[:PORT]."""
    parsed = urlparse(address)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ClusterError(f"{{setting}} {address}: give the head node's dashboard URL, e.g. http://HEAD:8265",
                           setting="address")
    return address.rstrip("/")


@contextmanager
def _address_from_flag_only() -> Iterator[None]:
    # Ray's client replaces the address it is given with $RAY_API_SERVER_ADDRESS or $RAY_ADDRESS; the address the
    # user typed must win, so both are hidden while the client is built. With $RAY_AUTH_MODE=token it would also add
    # the local session's token (~/.ray/auth_token) when no token was given: hidden too.
    from ray._raylet import Config

    hidden = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")
    saved = {name: os.environ.pop(name) for name in hidden if name in os.environ}
    # Ray caches the auth mode it read at start-up; read again without RAY_AUTH_MODE (as Ray does when it sets it).
    Config.initialize("")
    try:
        yield
    finally:
        os.environ.update(saved)


@contextmanager
def _cluster_errors(address: str, token: str | None, job_id: str | None = None) -> Iterator[None]:
    """Turns what Ray's job client raises into one-line `ClusterError` / `ClusterLostError`, the token redacted."""
    from ray.exceptions import AuthenticationError

    def redacted(error: Exception) -> str:
        text = " ".join(str(error).split())
        return text.replace(token, "<redacted>") if token else text

    try:
        yield
    except AuthenticationError:
        raise ClusterError(
            f"{{setting}}: the cluster at {address} refused the token; pass the token the cluster started with",
            setting="token_file",
        ) from None
    except OSError as error:
        raise ClusterLostError(f"lost contact with the job server at {address}: {redacted(error)}") from None
    except RuntimeError as error:
        if job_id is not None and "404" in str(error):
            raise ClusterError(
                f"job {job_id}: no such job at {address}; `mixbench jobs list` with the same {{setting}} lists them",
                setting="address",
            ) from None
        raise ClusterLostError(f"the job server at {address} failed: {redacted(error)}") from None


class JobServer:
    """The job server (dashboard) of one Ray cluster; build it with `JobServer.connect`."""

    def __init__(self, address: str, token: str | None, client) -> None:
        self.address = address
        self._token = token
        self._client = client

    @classmethod
    def connect(cls, address: str, token_file: Path | None = None) -> JobServer:
        """Checks that a Ray dashboard answers at `address` and accepts the token, and returns its job server."""
        from ray.job_submission import JobSubmissionClient

        address = check_address(address)
        token = read_token(token_file)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            reply = requests.get(f"{address}/api/version", headers=headers, timeout=CONNECT_TIMEOUT_S)
        except requests.RequestException:
            raise ClusterError(
                f"{{setting}} {address}: no Ray job server answers there; give the head's dashboard URL "
                "(http://HEAD:8265) and check that the cluster is up (`ray status` on the head)", setting="address"
            ) from None
        if reply.status_code == 401:
            raise ClusterError(
                f"the cluster at {address} wants its auth token; pass {{setting}} FILE "
                "(the token: `ray get-auth-token` on the head) or set RAY_AUTH_TOKEN", setting="token_file"
            )
        if reply.status_code == 403:
            raise ClusterError(f"{{setting}}: the cluster at {address} rejects this token; use the one it started "
                               "with", setting="token_file")
        if reply.status_code != 200 or "ray_version" not in reply.text:
            raise ClusterError(
                f"{{setting}} {address}: it answers (HTTP {reply.status_code}) but is not a Ray dashboard; "
                "give the head's dashboard URL, port 8265 unless changed", setting="address"
            )
        with _address_from_flag_only(), _cluster_errors(address, token):
            client = JobSubmissionClient(address, headers=headers)
        return cls(address, token, client)

    def redact(self, text: str) -> str:
        """`text` with the cluster's token blanked out."""
        return text.replace(self._token, "<redacted>") if self._token else text

    def submit(self, entrypoint: str, runtime_env: dict, metadata: dict[str, str]) -> str:
        """Submits `entrypoint` as a Ray job and returns its submission id."""
        with _cluster_errors(self.address, self._token):
            try:
                return self._client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env, metadata=metadata)
            except ValueError as error:  # Ray refuses the upload, e.g. a working dir over its size limit
                raise ClusterError(f"{{setting}}: {' '.join(str(error).split())}", setting="working_dir") from None

    def jobs(self) -> list:
        """Every job the cluster knows (`ray.job_submission.JobDetails`), oldest first."""
        with _cluster_errors(self.address, self._token):
            return sorted(self._client.list_jobs(), key=lambda job: job.start_time or 0)

    def info(self, job_id: str):
        """The job's `JobDetails` (status, message, entrypoint, times)."""
        with _cluster_errors(self.address, self._token, job_id):
            return self._client.get_job_info(job_id)

    def logs(self, job_id: str) -> str:
        """Everything the job has printed so far, token redacted."""
        with _cluster_errors(self.address, self._token, job_id):
            return self.redact(self._client.get_job_logs(job_id))

    def stop(self, job_id: str) -> bool:
        """Asks the cluster to stop the job; False when it had already ended."""
        with _cluster_errors(self.address, self._token, job_id):
            return self._client.stop_job(job_id)

    def wait(self, job_id: str):
        """Blocks until the job has ended and returns its final `JobDetails`."""
        while not (details := self.info(job_id)).status.is_terminal():
            time.sleep(POLL_INTERVAL_S)
        return details

    def follow(self, job_id: str, write: Callable[[str], None]):
        """Streams the job's logs (token redacted) to `write` until it ends; returns its final `JobDetails`."""
        import aiohttp

        self.info(job_id)  # an unknown id fails here with a clear message, not in the websocket handshake

        async def stream() -> None:
            async for chunk in self._client.tail_job_logs(job_id):
                write(self.redact(chunk))

        try:
            asyncio.run(stream())
        except (OSError, RuntimeError, asyncio.TimeoutError, aiohttp.ClientError):
            # The log stream can drop while the job runs on; the status polling below has the last word.
            write("[mixbench] log stream interrupted; waiting for the job to end\n")
        return self.wait(job_id)


def exit_code(status: str) -> int:
    """The exit code for a finished job's status: 0 succeeded, 1 failed, 3 stopped."""
    return EXIT_CODES[str(status)]
