"""MLflow tracking on a real local SQLite store."""

from __future__ import annotations

import pytest

from kmervae.config import PRESETS, RunConfig
from kmervae.engine import fit_local
from kmervae.errors import KmervaeError
from kmervae.tracking import Tracker, flatten, tracking_uri


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
    tracker = Tracker("tests", "tiny-run", uri=uri, tags={"engine": "local"})
    config = RunConfig(model=PRESETS["tiny"]).with_overrides(["train.epochs=2", "train.batch_size=64", "data.max_samples=400"])
    result = fit_local(example_features, config, tmp_path / "run", log=lambda line: None, tracker=tracker)
    run = tracker.client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["engine"] == "local"
    assert run.data.params["model.latent_dim"] == "8" and run.data.params["train.epochs"] == "2"
    history = tracker.client.get_metric_history(tracker.run_id, "val/loss")
    assert [(m.step, m.value) for m in history] == [(i, m["val/loss"]) for i, m in enumerate(result.history)]
    artifacts = {a.path for a in tracker.client.list_artifacts(tracker.run_id)}
    assert {"model.txt", "model.png", "metrics.jsonl", "checkpoints"} <= artifacts
    assert [a.path for a in tracker.client.list_artifacts(tracker.run_id, "checkpoints")] == ["checkpoints/best.pt"]
    assert (tmp_path / "mlruns").is_dir()  # artifacts beside the database, not in the cwd


def test_a_failed_run_is_marked_failed(tmp_path):
    tracker = Tracker("tests", "broken", uri=f"sqlite:///{tmp_path}/mlflow.db")
    with pytest.raises(KmervaeError, match="no such feature dataset"):
        fit_local(tmp_path / "missing", RunConfig(model=PRESETS["tiny"]), tmp_path / "run", tracker=tracker)
    assert tracker.client.get_run(tracker.run_id).info.status == "FAILED"
