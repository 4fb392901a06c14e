#!/usr/bin/env bash
# Stop what infra/local/start.sh started: the Ray head and the MLflow server (state is kept),
# and wait until their processes are gone.
set -uo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
state="${KMERVAE_LOCAL_DIR:-$repo/runs/local-cluster}"
export PATH="$repo/.venv/bin:$PATH"
ray stop --force >/dev/null 2>&1 || true
if [ -s "$state/mlflow.pid" ]; then
    pid=$(cat "$state/mlflow.pid")
    # start.sh runs the server in its own process group (setsid): stop the whole group.
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 30); do
        kill -0 -- "-$pid" 2>/dev/null || break
        sleep 0.5
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$state/mlflow.pid"
fi
for _ in $(seq 30); do  # Ray's daemons exit asynchronously after `ray stop`
    pgrep -f "raylet|gcs_server" >/dev/null || break
    sleep 0.5
done
echo "stopped the local Ray head and MLflow server (state kept in $state)"
