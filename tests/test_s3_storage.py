"""Ray storage on S3-compatible object storage (a local moto server): train, resume, sweep."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from kmervae.core.config import PRESETS, RunConfig
from kmervae.core.storage import exists, join, list_names

pytestmark = pytest.mark.cluster  # starts a Ray cluster or a server

pytest.importorskip("moto")
ray = pytest.importorskip("ray")

BUCKET = "kmervae-test"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on loopback, with the environment Ray's and pyarrow's S3 clients read."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")  # read by pyarrow's and boto3's S3 clients
            env.setenv("AWS_ACCESS_KEY_ID", "test")
            env.setenv("AWS_SECRET_ACCESS_KEY", "test")
            env.setenv("AWS_DEFAULT_REGION", "us-east-1")
            import boto3

            deadline = time.time() + 30
            while True:
                try:
                    boto3.client("s3").create_bucket(Bucket=BUCKET)
                    break
                except Exception:  # the server is still starting
                    if time.time() > deadline:
                        raise
                    time.sleep(0.3)
            ray.init(
                address="local", num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", logging_level="WARNING"
            )
            try:
                yield f"s3://{BUCKET}"
            finally:
                ray.shutdown()
    finally:
        server.terminate()
        server.wait(timeout=30)


def diverging_space(trial):
    """The first trial's loss overflows (loss.scale=1e38 -> inf); the other trains normally."""
    trial.suggest_float("train.lr", 5e-4, 2e-3, log=True)
    return {"loss.scale": 1e38} if trial.number == 0 else None


def tiny(epochs: int) -> RunConfig:
    return RunConfig(model=PRESETS["tiny"]).with_overrides(
        [f"train.epochs={epochs}", "train.batch_size=64", "data.max_samples=400"]
    )


def test_training_checkpoints_to_s3_and_resumes_from_there(s3, example_features, tmp_path, monkeypatch):
    from kmervae.distributed.ray_engine import fit_ray

    monkeypatch.chdir(tmp_path)
    storage = join(s3, "ray")
    first = fit_ray(
        example_features,
        tiny(2),
        workers=1,
        use_cpu=True,
        name="s3run",
        storage=storage,
        experiment=None,
        log=lambda line: None,
    )
    assert any(name.startswith("checkpoint_") for name in list_names(join(storage, "s3run")))
    assert first.best_checkpoint.exists() and str(first.best_checkpoint).startswith(str(tmp_path / "runs" / "outputs"))
    again = fit_ray(
        example_features,
        tiny(3),
        workers=1,
        use_cpu=True,
        name="s3run",
        storage=storage,
        experiment=None,
        log=lambda line: None,
    )
    assert [m["epoch"] for m in again.history] == [0, 1, 2] and again.history[:2] == first.history


def test_a_sweep_keeps_its_state_on_s3_and_a_diverging_trial_fails_alone(
    s3, example_features, tmp_path, monkeypatch, capfd
):
    """One sweep shows both (a sweep costs a minute on 2 cores): state on S3, and a trial whose
    loss becomes infinite fails with that reason while the other finishes and is picked."""
    from mlflow import MlflowClient

    from kmervae.core.config import SweepConfig
    from kmervae.distributed.console import quiet_console
    from kmervae.distributed.sweep import check_sweep

    monkeypatch.chdir(tmp_path)
    sweep = SweepConfig(
        name="s3sweep", storage=join(s3, "sweeps"), num_samples=2, gpus_per_trial=0, grace_period=1, register_as="",
        metric="val/knn_acc",  # the space varies loss.scale: val/loss would not compare the trials
    )  # fmt: skip
    checked = check_sweep(example_features, tiny(2), diverging_space, sweep, mlflow_dir=tmp_path)
    with quiet_console(checked.log_path):  # as the sweep scripts run it
        result = checked.run()
    assert sorted(t.status for t in result.trials) == ["ERROR", "OK"]
    failed = next(t for t in result.trials if t.status == "ERROR")
    assert "training loss became inf" in failed.error
    # The console: a few lines, the failed trial's reason in one line with where its trace and
    # everything the trials printed are (state on S3: the log is in the local outputs).
    shown = capfd.readouterr().err.splitlines()
    assert len(shown) <= 20, "\n".join(shown)
    log = tmp_path / "runs" / "outputs" / "s3sweep" / "sweep.log"
    reason = next(line for line in shown if line.strip().startswith("error: "))
    assert "training loss became inf" in reason and "trace: " in reason and f"everything printed: {log})" in reason
    assert sum("  FAILED  " in line for line in shown) == 1
    assert "kmervae> 1/2" in log.read_text()  # the workers' own lines (their epoch table) went to the log
    assert result.best_trial is not None and result.best_trial.status == "OK"
    assert exists(join(s3, "sweeps", "s3sweep", "tune")) and result.best_checkpoint.exists()
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("kmervae-sweeps").experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    failed_run = next(c for c in children if c.info.status == "FAILED")
    assert "training loss became inf" in failed_run.data.tags["kmervae.failure"]
