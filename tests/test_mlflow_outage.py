"""A real MLflow tracking server that is down at start, or dies while training runs.

At start: the run fails in seconds with a message naming the server, before Ray starts.
Mid-run: training and sweeps finish; calls that could not be sent are saved to
mlflow-outbox.jsonl and reported; once the server is back, `kmervae mlflow-sync` sends
them and every epoch is in MLflow exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from kmervae.core.config import PRESETS, RunConfig
from kmervae.core.errors import ConfigError
from tests.conftest import free_port

pytestmark = pytest.mark.cluster  # starts a Ray cluster or a server


class MlflowServer:
    """`mlflow server` on a SQLite file and a local artifact folder, started and killed for real."""

    def __init__(self, root):
        self.root, self.port, self.proc = root, free_port(), None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self) -> MlflowServer:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                f"sqlite:///{self.root}/mlflow.db",
                "--artifacts-destination",
                (self.root / "artifacts").as_uri(),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            # as infra/local/start.sh runs it: without the job runner's eight worker processes
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2):
                    return self
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("mlflow server did not start")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def server(tmp_path, monkeypatch):
    srv = MlflowServer(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", srv.uri)
    yield srv
    srv.kill()


def kill_when(path_glob, root, action, done: list):
    """Run `action` once a file matching `path_glob` appears under `root` (a checkpoint)."""

    def watch():
        deadline = time.time() + 600
        while time.time() < deadline:
            if list(root.glob(path_glob)):
                action()
                done.append(time.time())
                return
            time.sleep(0.1)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def space(trial):
    trial.suggest_float("train.lr", 5e-4, 2e-3, log=True)


def test_an_unreachable_server_fails_before_ray_starts(server, tmp_path, example_features):
    import ray

    from kmervae.core.config import SweepConfig
    from kmervae.distributed.ray_engine import fit_ray
    from kmervae.distributed.sweep import run_sweep

    with pytest.raises(
        ConfigError, match=f"MLflow tracking store {server.uri} is unreachable .*; start it, fix MLFLOW_TRACKING_URI"
    ):
        fit_ray(example_features, RunConfig(model=PRESETS["tiny"]), storage=tmp_path / "ray")
    assert not ray.is_initialized() and not list((tmp_path / "ray").glob("*"))  # no cluster, no run folder
    with pytest.raises(ConfigError, match=f"MLflow tracking store {server.uri} is unreachable"):
        run_sweep(
            example_features, RunConfig(model=PRESETS["tiny"]), space, SweepConfig(storage=str(tmp_path / "sweeps"))
        )
    assert not ray.is_initialized() and not (tmp_path / "sweeps").exists()


def test_training_outlives_a_dead_server_and_nothing_is_lost(server, tmp_path, example_features):
    from mlflow import MlflowClient

    from kmervae.distributed.ray_engine import fit_ray
    from kmervae.tracking.tracker import OUTBOX_FILE, sync_file

    server.start()
    storage, killed, lines = tmp_path / "ray", [], []
    watcher = kill_when("outage/checkpoint_*", storage, server.kill, killed)
    config = RunConfig(model=PRESETS["tiny"]).with_overrides(
        ["train.epochs=4", "train.batch_size=64", "data.max_samples=500"]
    )
    result = fit_ray(example_features, config, name="outage", storage=storage, log=lines.append, use_cpu=True)
    watcher.join(timeout=5)
    assert killed, "the server was not killed during training"
    assert [m["epoch"] for m in result.history] == [0, 1, 2, 3]  # training went on
    outbox = storage / "outage" / "outputs" / OUTBOX_FILE
    warning = [line for line in lines if line.startswith("warning: MLflow at")]
    assert len(warning) == 1 and f"saved to {outbox}; send them later with: kmervae mlflow-sync" in warning[0], lines
    server.start()  # back, on the same store
    sent, left = sync_file(outbox, server.uri)
    assert sent > 0 and left == 0 and not outbox.exists()
    client = MlflowClient(server.uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    for key in ("val/loss", "train/loss", "val/kl"):
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == [0, 1, 2, 3], key
    assert {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")} == {
        "checkpoints/best.pt",
        "checkpoints/last.pt",
    }
    runs = client.search_runs([run.info.experiment_id])
    assert len(runs) == 1  # no duplicate run


def test_a_sweep_outlives_a_dead_server(server, tmp_path, example_features):
    from mlflow import MlflowClient

    from kmervae.core.config import SweepConfig
    from kmervae.distributed.sweep import run_sweep
    from kmervae.tracking.tracker import sync_file

    server.start()
    storage, killed, lines = tmp_path / "sweeps", [], []
    watcher = kill_when("down/trials/trial-*/checkpoint_*", storage, server.kill, killed)
    base = RunConfig(model=PRESETS["tiny"]).with_overrides(
        ["train.epochs=2", "train.batch_size=64", "data.max_samples=400"]
    )
    sweep = SweepConfig(name="down", storage=str(storage), num_samples=2, grace_period=2, register_as="kmervae-down")
    result = run_sweep(example_features, base, space, sweep, log=lines.append)
    watcher.join(timeout=5)
    assert killed, "the server was not killed during the sweep"
    assert [row.status for row in result.trials] == ["OK"] * 2  # every trial trained
    assert result.best_checkpoint is not None and result.best_checkpoint.exists()
    assert result.registered is None
    assert any("kmervae-down not registered" in line for line in lines), lines
    outboxes = sorted((storage / "down").rglob("mlflow-outbox.jsonl"))
    assert outboxes, lines
    server.start()
    for outbox in outboxes:
        assert sync_file(outbox, server.uri)[1] == 0
    client = MlflowClient(server.uri)
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["best_trial_id"] == result.best_trial.trial_id
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    logged = {c.data.tags["kmervae.trial_id"]: c for c in children}
    assert len(children) == len(logged) == 2  # every trial once, the one started during the outage too
    for child in logged.values():
        steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "val/loss"))
        assert steps == list(range(len(steps))) and len(steps) >= 1, steps  # each epoch once
        assert child.info.status == "FINISHED" and child.data.params["train.epochs"] == "2"
