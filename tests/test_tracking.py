"""MLflow tracking on a real local SQLite store."""

from __future__ import annotations

import os

import pytest

from kmervae.base.errors import ConfigError, KmervaeError
from kmervae.core.config import PRESETS, RunConfig
from kmervae.core.run_outputs import ARTIFACT_FILES, CHECKPOINT_FILES
from kmervae.tracking.run import run_tags, train_local, training_run
from kmervae.tracking.tracker import Tracker, flatten, tracking_uri


def test_default_store_is_an_absolute_sqlite_file(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking_uri() == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri() == "http://127.0.0.1:5000"


def test_flatten():
    assert flatten({"model": {"latent_dim": 8, "widths": [1, 2]}, "x": None}) == {
        "model.latent_dim": "8", "model.widths": "[1, 2]", "x": "None",
    }  # fmt: skip


def test_a_local_run_is_logged_completely(tmp_path, example_features):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    config = RunConfig(model=PRESETS["tiny"]).with_overrides(
        ["train.epochs=2", "train.batch_size=64", "data.max_samples=400"]
    )
    spec = training_run(
        "local",
        "tiny-run",
        config,
        tmp_path / "run",
        experiment="tests",
        uri=uri,
        data_path=example_features,
        preset="tiny",
    )
    result, tracker = train_local(example_features, config, spec, log=lambda line: None)
    run = tracker.client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags.items() >= run_tags("local", "tiny-run", config, "tiny").items()
    assert run.data.params["data.path"] == str(example_features.absolute())
    assert run.data.params["model.latent_dim"] == "8" and run.data.params["train.epochs"] == "2"
    history = tracker.client.get_metric_history(tracker.run_id, "val/loss")
    assert [(m.step, m.value) for m in history] == [(i, m["val/loss"]) for i, m in enumerate(result.history)]
    # Every engine's outputs (test_ray_engine and test_sweep check the same sets).
    artifacts = {a.path for a in tracker.client.list_artifacts(tracker.run_id)}
    assert artifacts == {*ARTIFACT_FILES, "checkpoints"}
    checkpoints = {a.path for a in tracker.client.list_artifacts(tracker.run_id, "checkpoints")}
    assert checkpoints == {f"checkpoints/{name}" for name in CHECKPOINT_FILES}
    assert (tmp_path / "mlruns").is_dir()  # artifacts beside the database, not in the cwd
    # Marked as model training, so MLflow's UI opens the experiment on its runs table.
    experiment = tracker.client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_an_experiment_made_elsewhere_is_marked_once_and_a_chosen_kind_kept(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    plain = client.create_experiment("made-by-hand")
    chosen = client.create_experiment("chosen", tags={"mlflow.experimentKind": "finetuning"})
    Tracker("made-by-hand", "a", uri=uri).finish()
    Tracker("chosen", "b", uri=uri).finish()
    assert client.get_experiment(plain).tags["mlflow.experimentKind"] == "custom_model_development"
    assert client.get_experiment(chosen).tags["mlflow.experimentKind"] == "finetuning"


def test_a_failed_run_is_marked_failed(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    config = RunConfig(model=PRESETS["tiny"])
    spec = training_run("local", "broken", config, tmp_path / "run", experiment="tests", uri=uri)
    with pytest.raises(KmervaeError, match="no such feature dataset"):
        train_local(tmp_path / "missing", config, spec)
    [run] = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("tests").experiment_id])
    assert run.info.run_name == "broken" and run.info.status == "FAILED"


def test_a_run_without_an_experiment_trains_and_logs_nothing(tmp_path, example_features):
    config = RunConfig(model=PRESETS["tiny"]).with_overrides(["train.epochs=1", "data.max_samples=200"])
    result, tracker = train_local(example_features, config, training_run("local", "plain", config, tmp_path / "run"))
    assert tracker is None and result.best_checkpoint.is_file() and len(result.history) == 1
    assert not list(tmp_path.glob("*.db")) and not (tmp_path / "mlruns").exists()


def test_credentials_never_reach_mlflow_or_the_terminal(tmp_path, monkeypatch, capsys):
    from mlflow import MlflowClient

    from kmervae.base.redact import redact

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI-secret")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "hunter2-pw")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker("secrets", "run", uri=uri, tags={"kmervae.storage": "s3://AKIA:wJalrXUtnFEMI-secret@bucket/runs"})
    tracker.log_params(
        {
            "storage": "s3://AKIA:wJalrXUtnFEMI-secret@bucket/runs",
            "server": "https://alice:hunter2-pw@mlflow.example.org",
            "note": "password is hunter2-pw",
            "aws": {"secret_access_key": "anything-at-all"},
            "model": {"latent_dim": 32},
        }
    )
    tracker.set_tag("endpoint", "https://bob:letmein99@minio:9000")
    tracker.finish()
    run = MlflowClient(uri).get_run(tracker.run_id)
    stored = " ".join([*run.data.params.values(), *run.data.tags.values()])
    for secret in ("wJalrXUtnFEMI-secret", "hunter2-pw", "letmein99", "anything-at-all"):
        assert secret not in stored
    assert run.data.params["storage"] == "s3://AKIA:***@bucket/runs"
    assert run.data.params["server"] == "https://alice:***@mlflow.example.org"
    assert run.data.params["aws.secret_access_key"] == "***" and run.data.params["model.latent_dim"] == "32"
    # Messages naming a store mask it the same way.
    assert redact("cannot reach https://alice:hunter2-pw@host") == "cannot reach https://alice:***@host"
    with pytest.raises(ConfigError) as err:
        Tracker("x", uri="https://alice:hunter2-pw@127.0.0.1:9/")
    assert "hunter2-pw" not in str(err.value) and "https://alice:***@127.0.0.1:9/" in str(err.value)


def test_mlflow_sync_errors_are_one_line_and_keep_the_file(tmp_path, monkeypatch, capsys):
    import json

    from kmervae.cli import main

    assert main(["mlflow-sync", str(tmp_path / "none.jsonl")]) == 2
    assert "none.jsonl: no such MLflow outbox file" in capsys.readouterr().err
    junk = tmp_path / "junk.jsonl"
    junk.write_text("{not json\n")
    assert main(["mlflow-sync", str(junk)]) == 2
    assert "junk.jsonl: not an MLflow outbox file" in capsys.readouterr().err
    outbox = tmp_path / "mlflow-outbox.jsonl"
    op = {"op": "log_batch", "run_id": "0" * 32, "metrics": [["val/loss", 1.0, 0, 0]]}
    outbox.write_text(json.dumps(op) + "\n")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens on port 9
    assert main(["mlflow-sync", str(outbox)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1 call(s) could not be sent (is the server up?); they stay in" in err[0], err
    assert json.loads(outbox.read_text()) == op  # kept for the next try


def test_secrets_are_collected_while_another_thread_removes_a_variable(monkeypatch):
    """os.environ listed a name that was gone when its value was read (MLflow's telemetry pops
    one mid-run): collecting the secrets failed a sweep trial with KeyError."""
    import types
    from collections.abc import MutableMapping

    from kmervae.base import redact

    class Vanishing(MutableMapping):  # what os.environ looks like mid-removal
        def __init__(self, data):
            self.data = data

        def __iter__(self):
            yield from [*self.data, "_GONE_TOKEN"]

        def __getitem__(self, key):
            return self.data[key]

        def __len__(self):
            return len(self.data) + 1

        def __setitem__(self, key, value):
            self.data[key] = value

        def __delitem__(self, key):
            del self.data[key]

    # only the redact module sees it (os.environ itself stays, for every other thread)
    environ = Vanishing({"DB_PASSWORD": "hunter2-pw", "HOME": "/root"})
    monkeypatch.setattr(redact, "os", types.SimpleNamespace(environ=environ))
    assert redact.secret_values() == ["hunter2-pw"]
    assert redact.redact("password hunter2-pw") == "password ***"


def test_an_unreachable_store_is_told_apart_by_type(tmp_path, monkeypatch):
    import http.server
    import threading

    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from kmervae.tracking.tracker import is_unreachable
    from tests.conftest import free_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # seconds, not MLflow's minutes of retries
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")

    def error_of(client: MlflowClient) -> MlflowException:
        with pytest.raises(MlflowException) as raised:
            client.search_experiments()
        return raised.value

    refused = error_of(MlflowClient(f"http://127.0.0.1:{free_port()}"))  # nothing listens there

    class Unavailable(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # a proxy in front of a server that is down
            self.send_response(503)
            self.end_headers()

        do_POST = do_GET

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Unavailable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        unavailable = error_of(MlflowClient(f"http://127.0.0.1:{server.server_address[1]}"))
    finally:
        server.shutdown()
    assert is_unreachable(refused) and is_unreachable(unavailable)
    # A store that answers: a model registered twice is "exists already", not an outage.
    client = MlflowClient(tracking_uri(tmp_path))
    client.create_registered_model("twice")
    with pytest.raises(MlflowException) as exists:
        client.create_registered_model("twice")
    assert exists.value.error_code == "RESOURCE_ALREADY_EXISTS" and not is_unreachable(exists.value)


def test_runs_are_found_by_tags_whatever_quotes_their_values_hold(tmp_path):
    from mlflow import MlflowClient

    from kmervae.tracking.tracker import find_run, tag_filter

    client = MlflowClient(tracking_uri(tmp_path))
    experiment = client.create_experiment("quotes")
    ids = {}
    for name in ("bob's sweep", 'the "big" one', "plain"):
        ids[name] = client.create_run(experiment, tags={"kmervae.sweep": name}).info.run_id
    for name, run_id in ids.items():
        assert find_run(client, experiment, {"kmervae.sweep": name}) == run_id
    with pytest.raises(ConfigError, match="holds both quote characters"):
        tag_filter({"kmervae.sweep": 'it\'s "both"'})


def test_the_quick_http_give_up_is_a_default_a_person_can_override(monkeypatch):
    from kmervae.tracking.tracker import IMPATIENT_HTTP, use_impatient_http

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "120")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    use_impatient_http()
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "120"  # the person's value wins
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == IMPATIENT_HTTP["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
