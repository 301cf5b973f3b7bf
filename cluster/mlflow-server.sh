#!/usr/bin/env bash
# MixBench's MLflow tracking server, compose-free: runs, params and metrics in a database (PostgreSQL for a team),
# artifacts streamed through the server (--serve-artifacts) into S3 or a shared volume. Ray workers then need only
# the server's URL (`mixbench submit --tracking-uri http://HOST:5000`), never a database driver or bucket keys.
#
# Environment (mlflow reads these itself, so a database password never appears on a command line / in `ps`):
#   MLFLOW_BACKEND_STORE_URI       required: postgresql://mlflow@db.internal:5432/mlflow (password in ~/.pgpass,
#                                  mode 600), or sqlite:////abs/path/mlflow.db on a single machine
#   MLFLOW_ARTIFACTS_DESTINATION   required: s3://bucket/mlflow-artifacts (credentials from the instance role or
#                                  AWS_* variables), or an absolute directory on a shared volume
#   MLFLOW_HOST                    interface to bind; default 127.0.0.1 (this machine only). To serve a Ray cluster,
#                                  bind the head's private IP, never a public interface.
#   MLFLOW_PORT                    default 5000
#   MLFLOW_WORKERS                 uvicorn worker processes; default 2
#   MLFLOW_SERVER_ALLOWED_HOSTS    Host headers accepted (DNS-rebinding guard); mlflow's default is localhost and
#                                  private IPs. Add the name clients use, e.g. "mlflow.internal:5000".
#
# One-time setup on the server machine:
#   pip install "mlflow==3.17.2" psycopg2-binary boto3
#   sudo -u postgres psql -c "CREATE USER mlflow WITH PASSWORD '<password>'" -c "CREATE DATABASE mlflow OWNER mlflow"
#   echo "db.internal:5432:mlflow:mlflow:<password>" >> ~/.pgpass && chmod 600 ~/.pgpass
set -euo pipefail

: "${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI, e.g. postgresql://mlflow@db.internal:5432/mlflow}"
: "${MLFLOW_ARTIFACTS_DESTINATION:?set MLFLOW_ARTIFACTS_DESTINATION, e.g. s3://my-bucket/mlflow-artifacts}"
export MLFLOW_BACKEND_STORE_URI MLFLOW_ARTIFACTS_DESTINATION

exec mlflow server \
    --serve-artifacts \
    --host "${MLFLOW_HOST:-127.0.0.1}" \
    --port "${MLFLOW_PORT:-5000}" \
    --workers "${MLFLOW_WORKERS:-2}"
