"""The services a cluster run depends on, for real: Ray storage on S3-compatible object storage
(the session's moto server) and an MLflow tracking server that is down at start or dies mid-run.

At start: the run fails in seconds with a message naming the server, before Ray starts.
Mid-run: training and sweeps on S3 finish; calls that could not be sent are saved to
mlflow-outbox.jsonl and reported; once the server is back, `kmervae mlflow-sync` sends them and
every epoch is in MLflow exactly once; training resumes from its checkpoints on S3. Each Ray
scenario checks both services at once (a Ray run costs about 25 s of start-up on 2 cores).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from kmervae.base.errors import ConfigError
from kmervae.base.storage import exists, join, list_names
from kmervae.core.config import PRESETS, RunConfig
from tests.conftest import MlflowServer, ray_untouched, train_workers

pytestmark = pytest.mark.cluster  # starts a Ray cluster or a server

pytest.importorskip("moto")
ray = pytest.importorskip("ray")

BUCKET = "kmervae-test"


@pytest.fixture(scope="module")
def s3(s3_server, local_ray):
    """A bucket on the session's S3 server, with this process's S3 clients pointed at it (the
    shared cluster's workers already are)."""
    import boto3

    with pytest.MonkeyPatch.context() as env:
        for key, value in s3_server.items():
            env.setenv(key, value)
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield f"s3://{BUCKET}"


@pytest.fixture
def server(tmp_path, monkeypatch):
    srv = MlflowServer(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", srv.uri)
    yield srv
    srv.kill()


def has_checkpoint(folder: str) -> bool:
    return any(name.startswith("checkpoint_") for name in list_names(folder))


def kill_when(ready: Callable[[], bool], action, done: list):
    """Run `action` once `ready()` (a checkpoint on S3) is true, from a thread."""

    def watch():
        deadline = time.time() + 600
        while time.time() < deadline:
            if ready():
                action()
                done.append(time.time())
                return
            time.sleep(0.1)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def space(trial):
    trial.suggest_float("train.lr", 5e-4, 2e-3, log=True)


def diverging_space(trial):
    """The first trial's loss overflows (loss.scale=1e38 -> inf); the other trains normally."""
    trial.suggest_float("train.lr", 5e-4, 2e-3, log=True)
    return {"loss.scale": 1e38} if trial.number == 0 else None


def tiny(epochs: int) -> RunConfig:
    return RunConfig(model=PRESETS["tiny"]).with_overrides(
        [f"train.epochs={epochs}", "train.batch_size=64", "data.max_samples=400"]
    )


def test_an_unreachable_server_fails_before_ray_starts(server, tmp_path, example_features):
    from kmervae.core.config import SweepConfig
    from kmervae.distributed.ray_engine import fit_ray
    from kmervae.distributed.sweep import run_sweep

    unreachable = f"MLflow tracking store {server.uri} is unreachable .*; start it, fix MLFLOW_TRACKING_URI"
    with ray_untouched(), pytest.raises(ConfigError, match=unreachable):
        fit_ray(example_features, RunConfig(model=PRESETS["tiny"]), storage=tmp_path / "ray")
    assert not list((tmp_path / "ray").glob("*"))  # no run folder
    with ray_untouched(), pytest.raises(ConfigError, match=unreachable):
        run_sweep(
            example_features, RunConfig(model=PRESETS["tiny"]), space, SweepConfig(storage=str(tmp_path / "sweeps"))
        )
    assert not (tmp_path / "sweeps").exists()


def test_training_on_s3_outlives_a_dead_server_and_resumes_from_s3(s3, server, tmp_path, example_features, monkeypatch):
    from mlflow import MlflowClient

    from kmervae.distributed.ray_engine import fit_ray
    from kmervae.tracking.tracker import OUTBOX_FILE, sync_file

    monkeypatch.chdir(tmp_path)
    server.start()
    storage, killed, lines = join(s3, "ray"), [], []
    watcher = kill_when(lambda: has_checkpoint(join(storage, "outage")), server.kill, killed)
    train = dict(workers=1, use_cpu=True, name="outage", storage=storage)
    first = fit_ray(example_features, tiny(4), log=lines.append, **train)
    watcher.join(timeout=5)
    assert killed, "the server was not killed during training"
    assert [m["epoch"] for m in first.history] == [0, 1, 2, 3]  # training went on
    assert has_checkpoint(join(storage, "outage"))  # Ray's checkpoints are on S3; the outputs are local
    outputs = tmp_path / "runs" / "outputs" / "outage" / "outputs"
    assert first.best_checkpoint == outputs / "best.pt" and first.best_checkpoint.exists()
    outbox = outputs / OUTBOX_FILE
    warning = [line for line in lines if line.startswith("warning: MLflow at")]
    assert len(warning) == 1 and f"saved to {outbox}; send them later with: kmervae mlflow-sync" in warning[0], lines
    server.start()  # back, on the same store
    sent, left = sync_file(outbox, server.uri)
    assert sent > 0 and left == 0 and not outbox.exists()
    client = MlflowClient(server.uri)
    run = client.get_run(first.mlflow_run_id)
    assert run.info.status == "FINISHED"
    for key in ("val/loss", "train/loss", "val/kl"):
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == [0, 1, 2, 3], key
    assert {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")} == {
        "checkpoints/best.pt",
        "checkpoints/last.pt",
    }
    # The same name again, one epoch more: it resumes from its last checkpoint on S3.
    again = fit_ray(example_features, tiny(5), log=lambda line: None, **train)
    assert [m["epoch"] for m in again.history] == [0, 1, 2, 3, 4] and again.history[:4] == first.history
    assert again.mlflow_run_id == first.mlflow_run_id
    assert len(client.search_runs([run.info.experiment_id])) == 1  # no duplicate run


def test_a_sweep_on_s3_outlives_a_dead_server_and_a_diverging_trial_fails_alone(
    s3, server, tmp_path, example_features, monkeypatch, capfd
):
    """One sweep shows it all (a sweep costs a minute on 2 cores): state on S3, a trial whose loss
    becomes infinite fails with that reason at once (no restart: it would diverge again) while
    the other, running beside it, finishes and is picked, and the tracking server dies at the
    first checkpoint: every trial is in MLflow once after the sync."""
    from mlflow import MlflowClient

    from kmervae.core.config import SweepConfig
    from kmervae.distributed.console import quiet_console
    from kmervae.distributed.sweep import check_sweep
    from kmervae.tracking.tracker import sync_file

    monkeypatch.chdir(tmp_path)
    server.start()
    trials, killed = join(s3, "sweeps", "down", "trials"), []
    watcher = kill_when(lambda: any(has_checkpoint(join(trials, t)) for t in list_names(trials)), server.kill, killed)
    sweep = SweepConfig(
        name="down", storage=join(s3, "sweeps"), num_samples=2, max_concurrent=2, gpus_per_trial=0, grace_period=2,
        register_as="kmervae-down",
        metric="val/knn_acc",  # the space varies loss.scale: val/loss would not compare the trials
    )  # fmt: skip
    checked = check_sweep(example_features, tiny(2), diverging_space, sweep)
    workers_before = len(train_workers())
    with quiet_console(checked.log_path):  # as the sweep scripts run it
        result = checked.run()
    watcher.join(timeout=5)
    assert len(train_workers()) - workers_before == 2  # one worker per trial: none was restarted
    assert killed, "the server was not killed during the sweep"
    assert sorted(t.status for t in result.trials) == ["ERROR", "OK"]
    failed = next(t for t in result.trials if t.status == "ERROR")
    assert "training loss became inf" in failed.error
    # The console: a few lines, the failed trial's reason in one line with where its trace and
    # everything the trials printed are (state on S3: the log is in the local outputs).
    shown = capfd.readouterr().err.splitlines()
    assert len(shown) <= 24, "\n".join(shown)
    log = tmp_path / "runs" / "outputs" / "down" / "sweep.log"
    reason = next(line for line in shown if line.strip().startswith("error: "))
    assert "training loss became inf" in reason and "trace: " in reason and f"everything printed: {log})" in reason
    assert sum("  FAILED  " in line for line in shown) == 1
    assert any("kmervae-down not registered" in line for line in shown), shown  # the registry was down
    assert "kmervae> 1/2" in log.read_text()  # the workers' own lines (their epoch table) went to the log
    assert result.best_trial is not None and result.best_trial.status == "OK" and result.registered is None
    assert exists(join(s3, "sweeps", "down", "tune")) and result.best_checkpoint.exists()
    outboxes = sorted((tmp_path / "runs" / "outputs" / "down").rglob("mlflow-outbox.jsonl"))
    assert outboxes, shown
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
    assert len(children) == len(logged) == 2  # every trial once, whether it ended before or during the outage
    failed_run = logged[failed.trial_id]
    assert failed_run.info.status == "FAILED" and "training loss became inf" in failed_run.data.tags["kmervae.failure"]
    finished = logged[result.best_trial.trial_id]
    steps = sorted(m.step for m in client.get_metric_history(finished.info.run_id, "val/loss"))
    assert steps == [0, 1]  # each epoch once
    assert finished.info.status == "FINISHED" and finished.data.params["train.epochs"] == "2"
