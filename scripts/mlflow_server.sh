#!/usr/bin/env bash
# An MLflow tracking server, for jobs on many machines (SLURM): the server alone writes the store and
# every job talks HTTP to it, so no SQLite file is shared over the network. Point the workflow at it
# with `mlflow: {tracking_uri: http://HOST:PORT}`; docs/cluster.md has the details.
#
#   scripts/mlflow_server.sh [STORE_DIR] [more `mlflow server` options]
#
# STORE_DIR (default results/mlflow-server) holds the SQLite database and the artifacts of
# experiments created in the UI (the workflow's experiment keeps its artifacts under results/).
#   VLMFLOW_MLFLOW_HOST     interface to bind; default 127.0.0.1, this machine only
#   VLMFLOW_MLFLOW_PORT     default 5000
#   VLMFLOW_MLFLOW_BACKEND  another database, e.g. postgresql://mlflow@dbhost/mlflow
set -euo pipefail
store=$(realpath -m "${1:-results/mlflow-server}")
shift || true
mkdir -p "$store"
# The caller's mlflow first, else the repository's venv.
PATH="$PATH:$(dirname "$(realpath "$0")")/../.venv/bin"
# MLflow's background job runner (GenAI evaluation jobs) is not used here; off, the server is
# one process tree fewer and stops with a single signal.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}
exec mlflow server \
  --backend-store-uri "${VLMFLOW_MLFLOW_BACKEND:-sqlite:///$store/mlflow.db}" \
  --artifacts-destination "$store/artifacts" \
  --host "${VLMFLOW_MLFLOW_HOST:-127.0.0.1}" \
  --port "${VLMFLOW_MLFLOW_PORT:-5000}" \
  "$@"
