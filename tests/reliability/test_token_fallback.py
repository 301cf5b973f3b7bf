"""Finding 7 of issue 20 (deliverable 6): the local Ray session's token (~/.ray/auth_token) is never sent to another
address; `submit`/`jobs` send only `--token-file` or $RAY_AUTH_TOKEN. A real HTTP server on 127.0.0.1 stands in for
a remote dashboard and records every Authorization header it receives."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCAL_TOKEN = "local-session-token-0123456789"


@pytest.fixture
def dashboard():
    seen: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            body = json.dumps({"ray_version": "2.60.0", "version": "4", "ray_commit": "x"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", seen
    server.shutdown()


def connect(address: str, env: dict[str, str], token_file: Path | None = None) -> None:
    """`JobServer.connect` in a fresh process: Ray caches its authentication settings per process, so a token mode set
    here must not leak into the Ray runtimes that later tests start."""
    code = ("import sys; from pathlib import Path; from cluster.job_server import JobServer; "
            "JobServer.connect(sys.argv[1], Path(sys.argv[2]) if sys.argv[2] else None)")
    subprocess.run([sys.executable, "-c", code, address, str(token_file or "")], env=env, cwd=REPO_ROOT,
                   check=True, capture_output=True, timeout=120)


def test_the_local_session_token_stays_home(dashboard, tmp_path: Path):
    address, seen = dashboard
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text(LOCAL_TOKEN)
    env = {key: value for key, value in os.environ.items() if key != "RAY_AUTH_TOKEN"}
    env.update(HOME=str(tmp_path), RAY_AUTH_TOKEN_PATH=str(tmp_path / ".ray" / "auth_token"),
               RAY_AUTH_MODE="token")  # as a local search's Ray runtime leaves it
    connect(address, env)
    assert seen, "the dashboard was never asked"
    assert not any(header and LOCAL_TOKEN in header for header in seen)


def test_the_given_token_is_sent(dashboard, tmp_path: Path):
    address, seen = dashboard
    token_file = tmp_path / "cluster-token"
    token_file.write_text("cluster-token-abc\n")
    env = {key: value for key, value in os.environ.items() if key != "RAY_AUTH_TOKEN"}
    env["HOME"] = str(tmp_path)
    connect(address, env, token_file)
    assert seen and all(header == "Bearer cluster-token-abc" for header in seen)
