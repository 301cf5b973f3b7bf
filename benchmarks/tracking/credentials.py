"""Tracking credentials reach MLflow from the process environment, never from a stored URI: a search keeps its
tracking URI without user-info (in mixbench_search.json, Tune's pickles, run params) and hands the user name and
password to MLflow, and to the local Ray workers it starts, as MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD.
"""
from __future__ import annotations

import os
import urllib.parse

USERNAME_ENV = "MLFLOW_TRACKING_USERNAME"
PASSWORD_ENV = "MLFLOW_TRACKING_PASSWORD"


def move_credentials_to_env(uri: str | None) -> str | None:
    """`uri` (else $MLFLOW_TRACKING_URI) without user-info; its user name and password go into this process's
    environment, which Ray's local workers inherit. A URI without user-info is returned unchanged."""
    chosen = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not chosen:
        return uri
    parts = urllib.parse.urlsplit(chosen)
    if "@" not in parts.netloc:
        return uri
    userinfo, _, host = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    os.environ[USERNAME_ENV] = urllib.parse.unquote(username)
    if password:
        os.environ[PASSWORD_ENV] = urllib.parse.unquote(password)
    bare = urllib.parse.urlunsplit(parts._replace(netloc=host))
    if uri is None:
        os.environ["MLFLOW_TRACKING_URI"] = bare
        return None
    return bare
