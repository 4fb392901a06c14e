"""`ray job submit` of the main sweep against a local cluster started by infra/local/start.sh."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, group_alive, processes_mentioning, start_local_cluster, stop_local_cluster

pytestmark = pytest.mark.cluster  # starts a Ray cluster or a server

pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory, bystander):
    """A Ray head with token auth and an MLflow server on loopback, beside someone else's; ours is
    stopped afterwards, completely, and theirs keeps running."""
    state = tmp_path_factory.mktemp("local") / "cluster"
    env = start_local_cluster(state)
    ray_pgid, mlflow_pid = int((state / "ray.pgid").read_text()), int((state / "mlflow.pid").read_text())
    try:
        yield env, env["BANNER"]
    finally:
        stopped = stop_local_cluster(env)
    assert "stopped the local Ray head and MLflow server" in stopped
    # Nothing of ours is left: not the head's process group, not the MLflow server, no
    # process that speaks to our GCS port, no pid file; the bystander still runs.
    assert not group_alive(ray_pgid) and not group_alive(mlflow_pid)
    assert processes_mentioning(f":{env['RAY_PORT']}") == []
    assert not (state / "mlflow.pid").exists() and not (state / "ray.pgid").exists()
    bystander()


def test_job_submit_runs_the_latent_sweep(local_cluster, example_features, tmp_path, monkeypatch):
    env, banner = local_cluster
    dashboard = f"http://127.0.0.1:{env['DASHBOARD_PORT']}"
    mlflow_uri = f"http://127.0.0.1:{env['MLFLOW_PORT']}"
    assert dashboard in banner and "ray job submit" in banner
    storage = tmp_path / "sweeps"
    submit_env = dict(env, RAY_AUTH_MODE="token", PATH=f"{REPO / '.venv' / 'bin'}:{env['PATH']}")
    job = subprocess.run(
        [
            str(REPO / ".venv/bin/ray"),
            "job",
            "submit",
            "--address",
            dashboard,
            "--working-dir",
            str(REPO),
            "--runtime-env-json",
            f'{{"env_vars": {{"MLFLOW_TRACKING_URI": "{mlflow_uri}"}}}}',
            "--",
            "python",
            "sweeps/latent_sweep.py",
            "--smoke-test",
            "--preset",
            "recommended",  # as the Quickstart runs it: cross-view, InfoNCE, z-scored inputs under Ray
            "--samples",
            "2",
            "--data",
            str(example_features),
            "--name",
            "job",
            "--storage",
            str(storage),
        ],
        env=submit_env,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
    )
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "succeeded" in job.stdout and "registry  models:/kmervae-encoder@champion" in job.stdout
    # What a person reads: the header, one line per trial and the summary, not Ray's machinery,
    # which is in the sweep's log file, named in the summary.
    shown = job.stdout.splitlines()
    assert len(shown) <= 40, "\n".join(shown)
    ended = [line for line in shown if line.startswith("[") and "trial " in line]
    assert len(ended) == 2 and all(("finished" in line or "stopped early" in line) for line in ended), ended
    assert not any("TrainingReport" in line or "Deprecat" in line for line in shown)
    log = storage / "job" / "sweep.log"
    assert f"log       {log}" in job.stdout and "kmervae> 2/2" in log.read_text()
    from mlflow import MlflowClient

    # The suite's one smoke sweep, checked end to end: MLflow parent and children, plots,
    # registry, `kmervae best`, and export of the registered model.
    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name("kmervae-sweeps")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("kmervae.role") == "sweep"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    # The parent's description (MLflow's run overview): the best trial, linked to its child run.
    note = parent.data.tags["mlflow.note.content"]
    best_child = next(c for c in children if c.data.tags["kmervae.trial_id"] == parent.data.tags["best_trial_id"])
    assert f"/runs/{best_child.info.run_id})" in note.split("**Best trial**")[1].splitlines()[0]
    assert "Top 2 trial(s)" in note and "ranked on `val/knn_acc`" in note
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    for child in children:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val/loss")]
        assert steps and steps == list(range(len(steps)))
        assert "model.latent_dim" in child.data.params and child.info.status == "FINISHED"
        assert child.data.params["loss.infonce"] == "1.0" and child.data.params["model.input_norm"] == "zscore"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"best_model", "plots", "trials.csv"} <= artifacts
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"plots/objective_vs_params.png", "plots/learning_curves.png"} <= plots
    assert parent.data.params["dataset.contigs"] == "1558" and parent.data.tags["git_commit"]
    version = client.get_model_version_by_alias("kmervae-encoder", "champion")
    assert version.run_id == parent.info.run_id and version.version == "1"
    best_trial = parent.data.tags["best_trial_id"]
    assert (storage / "job" / "trials" / f"trial-{best_trial}" / "outputs" / "best.pt").exists()
    # `kmervae best` ranks the sweep's trials by their best epoch and picks the same trial.
    from kmervae.apply.best import best_runs, download_checkpoint
    from kmervae.apply.export import export

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    # The sweep ranked on val/knn_acc (its labels allow it): `kmervae best` ranks on it too.
    rows = best_runs("kmervae-sweeps", sweep=parent.info.run_id, metric="val/knn_acc", top=10)
    highest = {
        c.info.run_id: max(m.value for m in client.get_metric_history(c.info.run_id, "val/knn_acc")) for c in children
    }
    assert [r["run_id"] for r in rows] == sorted(highest, key=highest.get, reverse=True)
    assert rows[0]["name"].endswith(best_trial)
    assert download_checkpoint(rows[0]["run_id"], tmp_path / "picked").name == "best.pt"
    # The registered model is an MLflow pyfunc: loadable as it is, and exportable again.
    assert export("models:/kmervae-encoder@champion", "onnx", tmp_path / "champion.onnx").exists()


def test_a_client_without_the_token_is_refused(local_cluster):
    env, _ = local_cluster
    no_token = dict(env, RAY_AUTH_MODE="token", HOME=str(Path(env["KMERVAE_LOCAL_DIR"]) / "nohome"))
    listed = subprocess.run(
        [str(REPO / ".venv/bin/ray"), "job", "list", "--address", f"http://127.0.0.1:{env['DASHBOARD_PORT']}"],
        env=no_token,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listed.returncode != 0
    assert "auth" in (listed.stdout + listed.stderr).lower()


def listening_addresses(port: int) -> set[str]:
    """Addresses a TCP port listens on, read from /proc/net (IPv4 and IPv6)."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].split(":")
            if fields[3] == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                words = [raw[i : i + 4][::-1] for i in range(0, len(raw), 4)]  # little-endian 32-bit words
                found.add(socket.inet_ntop(socket.AF_INET if width == 8 else socket.AF_INET6, b"".join(words)))
    return found


def test_servers_listen_on_loopback_and_the_job_api_needs_the_token(local_cluster):
    import urllib.error
    import urllib.request

    env, _ = local_cluster
    for port in (env["DASHBOARD_PORT"], env["MLFLOW_PORT"]):
        assert listening_addresses(int(port)) == {"127.0.0.1"}, port
    # Ray's own agents also listen on the node's address (Ray 2.60 has no switch for that):
    # their job API must refuse a request without the token.
    node_ip = subprocess.run(
        [str(REPO / ".venv/bin/python"), "-c", "import ray._private.services as s; print(s.get_node_ip_address())"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    agent_port = int(env["AGENT_PORT"])  # the dashboard agent's HTTP port, chosen by the test
    assert listening_addresses(agent_port), "no dashboard agent found"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://{node_ip}:{agent_port}/api/job_agent/jobs/", timeout=10)
    assert refused.value.code == 401
