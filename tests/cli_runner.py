"""Runs the real `mixbench` entry point in this process and captures what it prints (shared by the CLI tests)."""
from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout

import cli


def mixbench(*args: str) -> tuple[int, str, str]:
    """Run `mixbench ARGS` through `cli.main`: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with redirect_stdout(out), redirect_stderr(err):
        try:
            cli.main(list(args))
        except SystemExit as done:
            code = done.code or 0
    return code, out.getvalue(), err.getvalue()
