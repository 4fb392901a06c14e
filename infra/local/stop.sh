#!/usr/bin/env bash
# Stop what infra/local/start.sh started: the Ray head and the MLflow server (state is kept).
set -uo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
state="${KMERVAE_LOCAL_DIR:-$repo/runs/local-cluster}"
export PATH="$repo/.venv/bin:$PATH"
ray stop --force >/dev/null 2>&1 || true
if [ -s "$state/mlflow.pid" ]; then
    pid=$(cat "$state/mlflow.pid")
    pkill -P "$pid" 2>/dev/null; kill "$pid" 2>/dev/null || true
    rm -f "$state/mlflow.pid"
fi
echo "stopped the local Ray head and MLflow server (state kept in $state)"
