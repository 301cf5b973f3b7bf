"""`mixbench submit` and `mixbench jobs`: run platform commands on a Ray cluster and watch them.

Exit codes of `submit --wait` and `jobs logs --follow`: 0 the job succeeded, 1 it failed, 3 it was stopped;
2 is bad input (address, token, flags), 4 a cluster that stopped answering.
"""
from __future__ import annotations

import logging
import sys
from datetime import datetime
from pathlib import Path
from typing import NoReturn

import click

from benchmarks.errors import SettingError
from cluster.job_server import JobServer, exit_code
from cluster.submission import Submission

ADDRESS_HELP = "The head node's dashboard URL, e.g. http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS)."
TOKEN_HELP = (
    "File holding the cluster's auth token (default: $RAY_AUTH_TOKEN; never the local ~/.ray/auth_token)."
)


def _connection_options(command):
    command = click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path), help=TOKEN_HELP)(command)
    return click.option("--address", envvar="RAY_API_SERVER_ADDRESS", required=True, help=ADDRESS_HELP)(command)


def _connect(address: str, token_file: Path | None) -> JobServer:
    server = JobServer.connect(address, token_file)
    # Ray's job client logs each file it leaves out of the upload, and each closed log stream, at INFO.
    for handler in logging.getLogger("ray").handlers:
        handler.setLevel(logging.WARNING)
    return server


def _echo_chunk(text: str) -> None:
    click.echo(text, nl=False)


def _finish(server: JobServer, details) -> NoReturn:
    """Reports a finished job on stderr and exits with its code."""
    job_id = details.submission_id
    # Ray appends the log's tail to a failure message; the logs were just streamed, so keep the first clause.
    message = " ".join((details.message or "").split()).split(", last available logs")[0][:300]
    click.echo(f"job {job_id} {details.status}: {server.redact(message)}", err=True)
    sys.exit(exit_code(details.status))


def _follow_until_done(server: JobServer, job_id: str) -> NoReturn:
    try:
        details = server.follow(job_id, _echo_chunk)
    except KeyboardInterrupt:
        click.echo(
            f"\njob {job_id} keeps running; stop it with `mixbench jobs stop {job_id} --address {server.address}`",
            err=True,
        )
        raise click.Abort() from None
    _finish(server, details)


def _parse_env(pairs: tuple[str, ...]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise SettingError(f"--env {pair}: write --env NAME=VALUE")
        env[name] = value
    return env


@click.command(context_settings={"allow_interspersed_args": False})
@_connection_options
@click.option("--wait", is_flag=True, help="Stream the job's logs; exit 0 if it succeeds, 1 if it fails, 3 if stopped.")
@click.option(
    "--working-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True,
    help="MixBench source root uploaded as the job's code (.gitignore'd files stay behind).",
)
@click.option(
    "--tracking-uri", envvar="MLFLOW_TRACKING_URI",
    help="MLflow tracking server every trial logs to, e.g. http://HEAD:5000 (default: $MLFLOW_TRACKING_URI).",
)
@click.option("--allow-local-tracking", is_flag=True, help="Accept a sqlite/file tracking URI (one-node clusters).")
@click.option(
    "--storage-path", envvar="MIXBENCH_STORAGE_PATH",
    help="Ray Tune storage every node reaches: s3://bucket/path or a shared mount (default: $MIXBENCH_STORAGE_PATH).",
)
@click.option("--env", "env_pairs", multiple=True, metavar="NAME=VALUE", help="Environment variable for the job.")
@click.option("--pip/--no-pip", default=False, show_default=True,
              help="Install this project's requirements into the job (when the cluster image lacks them).")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def submit(
    address: str, token_file: Path | None, wait: bool, working_dir: Path, tracking_uri: str | None,
    allow_local_tracking: bool, storage_path: str | None, env_pairs: tuple[str, ...], pip: bool,
    command: tuple[str, ...],
) -> None:
    """Run a mixbench command (after `--`) on a Ray cluster and print the job id.

    \b
    Example:
      mixbench submit --address http://HEAD:8265 --tracking-uri http://HEAD:5000 \\
          --storage-path s3://bucket/ray_results --wait -- search --dataset weather
    """
    submission = Submission(
        command=command, working_dir=working_dir, tracking_uri=tracking_uri, storage_path=storage_path,
        env=_parse_env(env_pairs), pip=pip, allow_local_tracking=allow_local_tracking,
    )
    if not submission.has_storage_path:
        click.echo(
            "note: no --storage-path; Ray Tune keeps trial results on the head's disk, in the job's uploaded "
            "working directory: Ray shares it between jobs of identical code (the same search submitted again stops "
            "at 'a search already exists'; add --name) and may evict it; pass --storage-path (s3://... or a path "
            "every node mounts) to keep results and resume searches", err=True,
        )
    server = _connect(address, token_file)
    job_id = server.submit(submission.entrypoint(), submission.runtime_env(), submission.metadata())
    click.echo(job_id)
    if not wait:
        click.echo(f"follow it: mixbench jobs logs {job_id} --follow --address {server.address}", err=True)
        return
    _follow_until_done(server, job_id)


@click.group()
def jobs() -> None:
    """List, inspect, follow and stop the jobs on a Ray cluster.

    \b
    Example:
      export RAY_API_SERVER_ADDRESS=http://HEAD:8265
      mixbench jobs list --token-file cluster-token
      mixbench jobs logs raysubmit_XXXX --follow
    """


@jobs.command("list")
@_connection_options
def list_jobs(address: str, token_file: Path | None) -> None:
    """Every job on the cluster, oldest first: id, status, start time, entrypoint.

    \b
    Example:
      mixbench jobs list --address http://HEAD:8265
    """
    server = _connect(address, token_file)
    for job in server.jobs():
        started = datetime.fromtimestamp(job.start_time / 1000).strftime("%Y-%m-%d %H:%M") if job.start_time else "-"
        click.echo(f"{job.submission_id or job.job_id}\t{job.status}\t{started}\t{server.redact(job.entrypoint)}")


@jobs.command("status")
@_connection_options
@click.argument("job_id")
def job_status(address: str, token_file: Path | None, job_id: str) -> None:
    """The job's status and the cluster's message about it.

    \b
    Example:
      mixbench jobs status raysubmit_XXXX --address http://HEAD:8265
    """
    server = _connect(address, token_file)
    details = server.info(job_id)
    click.echo(f"{details.status}\t{server.redact(' '.join((details.message or '').split()))}")


@jobs.command("logs")
@_connection_options
@click.option("--follow", is_flag=True, help="Stream until the job ends; exit 0 succeeded, 1 failed, 3 stopped.")
@click.argument("job_id")
def job_logs(address: str, token_file: Path | None, follow: bool, job_id: str) -> None:
    """What the job has printed; with --follow, stream it to the end.

    \b
    Example:
      mixbench jobs logs raysubmit_XXXX --follow --address http://HEAD:8265
    """
    server = _connect(address, token_file)
    if follow:
        _follow_until_done(server, job_id)
    click.echo(server.logs(job_id), nl=False)


@jobs.command("stop")
@_connection_options
@click.argument("job_id")
def stop_job(address: str, token_file: Path | None, job_id: str) -> None:
    """Ask the cluster to stop the job (its status becomes STOPPED).

    \b
    Example:
      mixbench jobs stop raysubmit_XXXX --address http://HEAD:8265
    """
    server = _connect(address, token_file)
    if server.stop(job_id):
        click.echo(f"stop requested for {job_id}")
    else:
        click.echo(f"{job_id} had already ended: {server.info(job_id).status}")
