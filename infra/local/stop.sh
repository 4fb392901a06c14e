#!/usr/bin/env bash
# Stop what infra/local/start.sh started: the Ray head and the MLflow server (state is kept),
# and wait until their processes are gone. Each runs in its own process group, recorded by
# start.sh; only those groups are signalled, so other Ray clusters and MLflow servers on this
# machine (a user's own) are left alone.
set -uo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
state="${KMERVAE_LOCAL_DIR:-$repo/runs/local-cluster}"

grace="${STOP_GRACE_S:-15}"  # seconds between SIGTERM and SIGKILL (Ray's daemons take a while)

stop_group() {  # TERM the process group in file $1, KILL what is left after the grace period
    [ -s "$1" ] || return 0
    local pgid
    pgid=$(cat "$1")
    kill -TERM -- "-$pgid" 2>/dev/null || { rm -f "$1"; return 0; }
    for _ in $(seq $((grace * 2))); do
        kill -0 -- "-$pgid" 2>/dev/null || break
        sleep 0.5
    done
    kill -KILL -- "-$pgid" 2>/dev/null || true
    for _ in $(seq 20); do  # SIGKILL is asynchronous: wait until the group is empty
        kill -0 -- "-$pgid" 2>/dev/null || break
        sleep 0.25
    done
    rm -f "$1"
}

stop_group "$state/ray.pgid"
# `ray start` names its head in ray_current_cluster, where a later ray.init() would look for
# it; remove the entry when it is ours (what `ray stop` does), leave another cluster's alone.
current="${RAY_TMPDIR:-${TMPDIR:-/tmp}}/ray/ray_current_cluster"
grep -qs ":${RAY_PORT:-6380}\$" "$current" && rm -f "$current"
stop_group "$state/mlflow.pid"  # start.sh runs the server under setsid: its pid is its group
echo "stopped the local Ray head and MLflow server (state kept in $state)"
