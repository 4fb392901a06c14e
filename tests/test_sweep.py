"""Sweeps on a real local Ray cluster with real MLflow: the smoke sweep, resume, divergence."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kmervae.core.config import PRESETS, RunConfig, SweepConfig
from kmervae.core.errors import ConfigError
from kmervae.core.run_outputs import ARTIFACT_FILES, CHECKPOINT_FILES
from kmervae.distributed.sweep import check_space
from tests.conftest import REPO, stop_process_group

pytestmark = pytest.mark.cluster  # starts a Ray cluster or a server

pytest.importorskip("ray")


def sweep_script(*args: str, cwd: Path, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        # The quality sweep: its --smoke-test exercises every lever on a real cluster (cross-view,
        # input normalisation, free bits, cyclical beta, genome-level validation).
        [sys.executable, str(REPO / "sweeps" / "quality_sweep.py"), *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def mlflow_runs(root: Path):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    experiment = client.get_experiment_by_name("kmervae-sweeps")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("kmervae.role") == "sweep"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


def test_interrupted_sweep_resumes_without_duplicates(tmp_path, example_features, monkeypatch, bystander):
    args = [
        "--smoke-test",
        "--samples",
        "3",
        "--data",
        str(example_features),
        "--name",
        "cut",
        "--storage",
        "sweeps",
        "--register-as",
        "",
        "--metric",  # the binning objective: every trial bins its validation contigs each epoch
        "val/nc_bins",
    ]
    proc = sweep_script(*args, cwd=tmp_path, start_new_session=True)
    trials = tmp_path / "sweeps" / "cut" / "trials"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        done = [d for d in trials.glob("trial-*") if len(list(d.glob("checkpoint_*"))) >= 2]
        if len(list(trials.glob("trial-*"))) >= 2 and done:
            break
        time.sleep(0.5)
    assert proc.poll() is None, "the sweep ended before it could be interrupted"
    # The driver and the local cluster it started share its process group: kill exactly that.
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    stop_process_group(proc.pid)  # waits until every process of the group is gone
    bystander()  # someone else's Ray cluster and MLflow server were not touched
    resumed = sweep_script(*args, "--resume", cwd=tmp_path)
    out, err = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, err[-3000:]
    assert "sweep     cut: 3 trial(s), 0 failed" in out
    client, parents, children = mlflow_runs(tmp_path)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 3, [c.info.run_name for c in children]  # resumed trials kept their runs
    for child in children:
        # Each epoch once (ASHA may have stopped a trial after its first): no duplicate steps.
        steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "val/loss"))
        assert steps == list(range(len(steps))) and 1 <= len(steps) <= 2, steps
        bins = [m.value for m in client.get_metric_history(child.info.run_id, "val/nc_bins")]
        assert len(bins) == len(steps) and all(v in (0, 1, 2) for v in bins), bins  # two genomes held out
        assert child.info.status == "FINISHED"
        # A trial's outputs and tags are every training run's (test_tracking, test_ray_engine).
        assert {a.path for a in client.list_artifacts(child.info.run_id)} == {*ARTIFACT_FILES, "checkpoints"}
        checkpoints = {a.path for a in client.list_artifacts(child.info.run_id, "checkpoints")}
        assert checkpoints == {f"checkpoints/{name}" for name in CHECKPOINT_FILES}
        assert child.data.tags["engine"] == "ray" and child.data.tags["kmervae.run_name"] == child.info.run_name
        supervised = float(child.data.params["loss.supcon"]) > 0  # a trial that trained on labels says so
        assert child.data.tags["kmervae.uses_labels"] == str(supervised).lower()
    # Optuna's history survived the kill: its study holds every trial, told once, with the
    # same parameters the trials trained with (as MLflow recorded them).
    import importlib.util

    from ray.tune.search.optuna import OptunaSearch

    # The saved searcher refers to the script's space function as __main__.space.
    spec = importlib.util.spec_from_file_location("quality_sweep_script", REPO / "sweeps" / "quality_sweep.py")
    monkeypatch.syspath_prepend(str(REPO / "sweeps"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr(sys.modules["__main__"], "space", script.space, raising=False)
    searcher = OptunaSearch()
    searcher.restore_from_dir(str(tmp_path / "sweeps" / "cut" / "tune"))
    told = [t for t in searcher._ot_study.trials if t.state.is_finished()]
    assert len(told) == 3, [t.state for t in searcher._ot_study.trials]
    for key in ("loss.beta", "model.latent_dim"):
        assert sorted(float(t.params[key]) for t in told) == pytest.approx(
            sorted(float(c.data.params[key]) for c in children)
        )


def broken_space(trial):
    trial.suggest_int("model.latent_dim", 0, 4)  # latent 0 is not a valid model


def typo_space(trial):
    trial.suggest_float("train.learning_rate", 1e-4, 1e-2)


def test_an_unsampleable_space_fails_before_ray_starts():
    with pytest.raises(ConfigError, match="model.latent_dim=0 is invalid"):
        check_space(broken_space, RunConfig(model=PRESETS["tiny"]), seed=0, samples=64)
    with pytest.raises(ConfigError, match="unknown key train.learning_rate"):
        check_space(typo_space, RunConfig(), seed=0)
    with pytest.raises(ConfigError, match="cannot be pickled: define it at module level"):
        check_space(lambda trial: trial.suggest_float("train.lr", 1e-4, 1e-2), RunConfig(), seed=0)


def test_sweep_settings_are_validated():
    with pytest.raises(ConfigError, match="--metric='val/mse' is invalid"):
        SweepConfig(metric="val/mse")
    with pytest.raises(ConfigError, match="--samples=0 is invalid"):
        SweepConfig(num_samples=0)
