"""`ray job submit` of the main job (the binning sweep) against a local cluster started by infra/local/start.sh:
stopped mid-sweep and resumed, the registry, `kmervae best`; the cluster's token and loopback servers."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kmervae.core.run_outputs import ARTIFACT_FILES, CHECKPOINT_FILES
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


def ray_cli(env: dict[str, str], *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """The `ray` command of the project's .venv against our cluster's job API, with its token."""
    submit_env = dict(env, RAY_AUTH_MODE="token", PATH=f"{REPO / '.venv' / 'bin'}:{env['PATH']}")
    return subprocess.run(
        [str(REPO / ".venv/bin/ray"), *args], env=submit_env, capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


PACKAGE_RACE = "Failed to download runtime_env file package"
"""Ray's error when a job resubmitted right after `ray job stop` reuses the stopped job's
working-dir package as Ray deletes it (ray-project/ray#46625: Ray checks that the package
exists, skips the upload, and the package is gone when the new job unpacks it)."""


def test_a_stopped_sweep_job_resumes_without_duplicates(
    local_cluster, marked_abundance_features, tmp_path, monkeypatch
):
    """The main job, as users run it: `ray job submit` of the binning sweep (the metagenome preset,
    ranked on val/nc_bins, one setting trained with two seeds); `ray job stop` kills its driver
    mid-sweep (SIGTERM: Tune saves nothing on the way out) and the same command with --resume
    finishes it. The suite's one script sweep,
    checked end to end: console, MLflow parent and children, Optuna's history, plots, registry,
    `kmervae best` and export of the registered model."""
    env, banner = local_cluster
    dashboard = f"http://127.0.0.1:{env['DASHBOARD_PORT']}"
    mlflow_uri = f"http://127.0.0.1:{env['MLFLOW_PORT']}"
    assert dashboard in banner and "ray job submit" in banner
    storage = tmp_path / "sweeps"
    sweep = [
        "python",
        "sweeps/binning_sweep.py",
        "--smoke-test",
        "--samples",
        "2",
        "--seeds",
        "2",
        "--data",
        str(marked_abundance_features),
    ]
    # Ranked on the labels' val/nc_bins; each trial also judges its bins by marker genes (val/est_nc_bins).
    sweep += ["--name", "job", "--storage", str(storage), "--set", "train.est_nc_bins=true"]

    def submit(submission_id: str, *args: str, wait: bool = True) -> subprocess.CompletedProcess:
        runtime = f'{{"env_vars": {{"MLFLOW_TRACKING_URI": "{mlflow_uri}"}}}}'
        flags = ["--address", dashboard, "--submission-id", submission_id, "--working-dir", str(REPO)]
        flags += ["--runtime-env-json", runtime, *([] if wait else ["--no-wait"])]
        job = ray_cli(env, "job", "submit", *flags, "--", *sweep, *args)
        if job.returncode != 0 and PACKAGE_RACE in job.stdout + job.stderr:
            # Ray reused the stopped job's code package as it deleted it: what the README
            # (and Ray's message) tells a person to do, submitting again.
            flags[flags.index(submission_id)] = f"{submission_id}-again"
            job = ray_cli(env, "job", "submit", *flags, "--", *sweep, *args)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        return job

    submit("sweep-cut", wait=False)
    # Cut as soon as the first trial has a checkpoint (Tune saves its own state every 10 s):
    # the resume restarts that trial from its Ray Train checkpoint, mid-way, or after its last
    # epoch if that came before the stop. Either way ASHA's clock must count the epochs trained
    # before the cut, or the trial trains past the sweep's 2 epochs (checked below).
    deadline = time.time() + 600
    while time.time() < deadline and not (cut := list((storage / "job" / "trials").glob("trial-*/checkpoint_*"))):
        time.sleep(0.2)
    cut_trial = cut[0].parent.name.removeprefix("trial-")  # in Tune's first saved state: resumed, not lost
    stopped = ray_cli(env, "job", "stop", "--address", dashboard, "sweep-cut")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout + stopped.stderr, stopped.stdout + stopped.stderr
    status = ray_cli(env, "job", "status", "--address", dashboard, "sweep-cut")
    assert "was stopped" in status.stdout, status.stdout  # cut, not finished before the stop
    job = submit("sweep-resumed", "--resume")
    assert "succeeded" in job.stdout and "registry  models:/kmervae-encoder@champion" in job.stdout
    assert "sweep     job: 2 trial(s), 0 failed" in job.stdout
    assert re.search(r"setting   median val/nc_bins [\d.]+ over its 2 seed\(s\)", job.stdout), job.stdout
    # What a person reads: the header, one line per trial and the summary, not Ray's machinery,
    # which is in the sweep's log file, named in the summary.
    shown = job.stdout.splitlines()
    assert len(shown) <= 40, "\n".join(shown)
    ended = [line for line in shown if line.startswith("[") and "trial " in line]
    assert ended and all(("finished" in line or "stopped early" in line) for line in ended), ended
    assert not any("TrainingReport" in line or "Deprecat" in line for line in shown)
    log = storage / "job" / "sweep.log"
    assert f"log       {log}" in job.stdout and re.search(r"kmervae> 2/\d+ ", log.read_text())  # the epoch tables
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name("kmervae-sweeps")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("kmervae.role") == "sweep"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 2, [c.info.run_name for c in children]
    assert cut_trial in {c.data.tags["kmervae.trial_id"] for c in children}  # the cut trial kept its run
    parent = parents[0]
    # One setting, two seeds: the same sampled settings, train.seed 0 and 1.
    TRIAL_INDEX = "trial.__trial_index__"  # noqa: N806
    sampled = [
        {k: v for k, v in c.data.params.items() if k.startswith("trial.") and k not in ("trial.id", TRIAL_INDEX)}
        for c in children
    ]
    assert sampled[0] == sampled[1] and len(sampled[0]) > 3, sampled
    assert sorted(c.data.params["train.seed"] for c in children) == ["0", "1"]
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id and child.info.status == "FINISHED"
        # Each epoch once, all of the sweep's 2: with several seeds no trial is stopped early. (The
        # space draws 10-40 epochs; the sweep's 2 is every trial's budget, so 2 is not early.)
        steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "val/loss"))
        assert steps == [0, 1], steps
        assert child.data.tags["kmervae.stopped_early"] == "false"
        bins = [m.value for m in client.get_metric_history(child.info.run_id, "val/nc_bins")]
        assert len(bins) == len(steps) and all(v in range(6) for v in bins), bins  # five genomes, every contig
        estimated = [m.value for m in client.get_metric_history(child.info.run_id, "val/est_nc_bins")]
        assert len(estimated) == len(steps) and all(0 <= v < 6 for v in estimated), estimated
        # A trial's outputs and tags are every training run's (test_tracking, test_ray_engine).
        assert {a.path for a in client.list_artifacts(child.info.run_id)} == {*ARTIFACT_FILES, "checkpoints"}
        checkpoints = {a.path for a in client.list_artifacts(child.info.run_id, "checkpoints")}
        assert checkpoints == {f"checkpoints/{name}" for name in CHECKPOINT_FILES}
        assert child.data.tags["engine"] == "ray" and child.data.tags["kmervae.run_name"] == child.info.run_name
        assert child.data.tags["kmervae.uses_labels"] == "false"  # labels only score the trials
        assert child.data.params["data.val_split"] == "all" and "loss.wab" in child.data.params
    # The parent's description (MLflow's run overview): the best trial, linked to its child run.
    note = parent.data.tags["mlflow.note.content"]
    best_trial = parent.data.tags["best_trial_id"]
    best_child = next(c for c in children if c.data.tags["kmervae.trial_id"] == best_trial)
    assert f"/runs/{best_child.info.run_id})" in note.split("**Best trial**")[1].splitlines()[0]
    assert "Top 2 trial(s)" in note and "ranked on `val/nc_bins`" in note and "median over 2 seed(s)" in note
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"best_model", "plots", "trials.csv"} <= artifacts
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"plots/objective_vs_params.png", "plots/learning_curves.png"} <= plots
    assert parent.data.params["dataset.contigs"] == "1558" and parent.data.tags["git_commit"]
    version = client.get_model_version_by_alias("kmervae-encoder", "champion")
    assert version.run_id == parent.info.run_id and version.version == "1"
    assert (storage / "job" / "trials" / f"trial-{best_trial}" / "outputs" / "best.pt").exists()
    # Optuna's history survived the stop: its study holds the one setting, told once (the median of
    # its two seeds), with the parameters the trials trained with (as MLflow recorded them).
    assert_optuna_told(storage / "job" / "tune", children, monkeypatch)
    # `kmervae best` ranks the trials by their best epoch; the sweep's best trial has the top score.
    from kmervae.apply.best import best_runs, download_checkpoint
    from kmervae.apply.export import export

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    rows = best_runs("kmervae-sweeps", sweep=parent.info.run_id, metric="val/nc_bins", top=10)
    best = {
        c.info.run_id: max(m.value for m in client.get_metric_history(c.info.run_id, "val/nc_bins")) for c in children
    }
    assert [r.value for r in rows] == sorted(best.values(), reverse=True) and rows[0].metric == "val/nc_bins"
    assert best[best_child.info.run_id] == rows[0].value  # ties rank in any order
    assert download_checkpoint(rows[0].run_id, tmp_path / "picked").name == "best.pt"
    # The registered model is an MLflow pyfunc: loadable as it is, and exportable again.
    assert export("models:/kmervae-encoder@champion", "onnx", tmp_path / "champion.onnx").exists()


def assert_optuna_told(tune_dir: Path, children, monkeypatch) -> None:
    """The saved Optuna study holds one finished trial per MLflow child, with its parameters."""
    import importlib.util

    from ray.tune.search.optuna import OptunaSearch

    from kmervae.distributed.seed_repeats import SeedRepeats
    from kmervae.distributed.sweep import SEED_INDEX

    # The saved searcher refers to the script's space function as __main__.space.
    spec = importlib.util.spec_from_file_location("binning_sweep_script", REPO / "sweeps" / "binning_sweep.py")
    monkeypatch.syspath_prepend(str(REPO / "sweeps"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr(sys.modules["__main__"], "space", script.space, raising=False)
    searcher = SeedRepeats(OptunaSearch(), 2, SEED_INDEX)
    searcher.restore_from_dir(str(tune_dir))
    study = searcher.inner._ot_study
    told = [t for t in study.trials if t.state.is_finished()]
    assert len(told) == 1, [t.state for t in study.trials]
    last = [float(c.data.metrics["val/nc_bins"]) for c in children]  # Tune tells a trial's last report
    assert told[0].value == pytest.approx(sum(last) / 2)  # the median of two
    for key in ("loss.beta", "model.latent_dim", "loss.wab"):
        for child in children:
            assert float(child.data.params[key]) == pytest.approx(float(told[0].params[key]))


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
