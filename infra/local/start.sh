#!/usr/bin/env bash
# Start, on this machine, a Ray head (token authentication, dashboard on 127.0.0.1) and an
# MLflow tracking server (SQLite + artifact folder), then print their addresses and the
# exact `ray job submit` command. Stop both with infra/local/stop.sh.
#
# Knobs (environment): KMERVAE_LOCAL_DIR (state folder, default runs/local-cluster),
# RAY_PORT (6380), DASHBOARD_PORT (8265), MLFLOW_PORT (5000), NUM_CPUS (all cores),
# AGENT_PORT (52365, the dashboard agent that runs submitted jobs) and CLIENT_PORT (10001, Ray
# Client): Ray's fixed defaults, so a second cluster on one machine needs other values for all,
# or its job API answers "No available agent to submit job" (the first cluster's agent holds the port);
# BIND_HOST (127.0.0.1: the dashboard/job API and MLflow are reachable from this machine only;
# set 0.0.0.0 to serve other machines, and keep the token and a firewall in front of them);
# MLFLOW_WORKERS (MLflow's 4: server processes, each of which imports MLflow).
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$repo"
state="${KMERVAE_LOCAL_DIR:-$repo/runs/local-cluster}"
ray_port="${RAY_PORT:-6380}"
dashboard_port="${DASHBOARD_PORT:-8265}"
mlflow_port="${MLFLOW_PORT:-5000}"
mkdir -p "$state"
# The job driver runs `python` from the head's PATH: make it this project's environment.
export PATH="$repo/.venv/bin:$PATH"
export RAY_AUTH_MODE=token  # clients without ~/.ray/auth_token are refused
[ -s "$HOME/.ray/auth_token" ] || ray get-auth-token --generate >/dev/null
bind_host="${BIND_HOST:-127.0.0.1}"
# The head's daemons run in a process group of their own (setsid; every daemon inherits it),
# recorded in ray.pgid: stop.sh stops exactly this head, never another Ray cluster here.
setsid ray start --head --port "$ray_port" --dashboard-host "$bind_host" --dashboard-port "$dashboard_port" \
    --dashboard-agent-listen-port "${AGENT_PORT:-52365}" --ray-client-server-port "${CLIENT_PORT:-10001}" \
    --num-cpus "${NUM_CPUS:-$(nproc)}" --disable-usage-stats >"$state/ray-start.log" 2>&1 &
ray_pgid=$!
wait "$ray_pgid" || { cat "$state/ray-start.log" >&2; kill -KILL -- "-$ray_pgid" 2>/dev/null; exit 1; }
echo "$ray_pgid" >"$state/ray.pgid"
# MLflow's job runner (GenAI evaluation jobs, which kmervae does not use) would start eight more
# Python processes beside the server; off unless the caller turns it on.
MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}" \
    setsid nohup mlflow server --host "$bind_host" --port "$mlflow_port" --workers "${MLFLOW_WORKERS:-4}" \
    --backend-store-uri "sqlite:///$state/mlflow.db" --artifacts-destination "$state/mlartifacts" \
    >"$state/mlflow.log" 2>&1 &
echo $! >"$state/mlflow.pid"
for _ in $(seq 60); do
    curl -sf "http://127.0.0.1:$mlflow_port/health" >/dev/null && break
    sleep 1
done
curl -sf "http://127.0.0.1:$mlflow_port/health" >/dev/null || { echo "MLflow did not start; see $state/mlflow.log" >&2; exit 1; }
cat <<MSG
Ray dashboard   http://127.0.0.1:$dashboard_port   (token in ~/.ray/auth_token)
MLflow          http://127.0.0.1:$mlflow_port
Submit a sweep:
  RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:$dashboard_port --working-dir . \\
    --runtime-env-json '{"env_vars": {"MLFLOW_TRACKING_URI": "http://127.0.0.1:$mlflow_port"}}' \\
    -- python sweeps/latent_sweep.py --smoke-test --storage $state/sweeps
Stop:           infra/local/stop.sh
MSG
