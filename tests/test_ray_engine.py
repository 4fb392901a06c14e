"""Distributed training on a real local Ray cluster (CPU workers, gloo) with real MLflow."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from kmervae.base.errors import ConfigError, InputError
from kmervae.base.metric_keys import epoch_keys
from kmervae.core.checkpoint import load_checkpoint
from kmervae.core.config import PRESETS, RunConfig
from kmervae.core.data import load_splits
from kmervae.core.engine import validate_epoch
from kmervae.core.metrics import link_agreement
from kmervae.core.run_outputs import ARTIFACT_FILES, CHECKPOINT_FILES
from kmervae.distributed.ray_engine import fit_ray, plan_resources
from kmervae.tracking.run import run_tags
from tests.conftest import ray_untouched, train_workers

pytestmark = pytest.mark.cluster  # starts a Ray cluster or a server

ray = pytest.importorskip("ray")


def tiny(epochs: int) -> RunConfig:
    return RunConfig(model=PRESETS["tiny"]).with_overrides(
        [f"train.epochs={epochs}", "train.batch_size=64", "train.lr=3e-3"]
    )


def with_abundance(epochs: int) -> RunConfig:
    """`tiny` with an abundance branch, on features with depths: what the shared two-worker run
    trains (thinned depths in the halves that score val/view_agreement), its bins judged by the
    dataset's marker genes every epoch (val/est_nc_bins, gathered from both workers)."""
    return tiny(epochs).with_overrides(
        ["model.abundance_widths=[8]", "loss.abundance_views=thinned", "train.est_nc_bins=true"]
    )


@pytest.fixture(scope="module")
def two_worker_run(local_ray, marked_abundance_features, tmp_path_factory):
    root = tmp_path_factory.mktemp("ray-run")
    before = sys.stdout, sys.stderr, dict(os.environ)
    result = fit_ray(
        marked_abundance_features,
        with_abundance(2),
        workers=2,
        use_cpu=True,
        name="two",
        storage=root / "storage",
        mlflow_dir=root,
        log=lambda line: None,
    )
    # A library call leaves the process as it found it: no redirection, no environment edits
    # (kmervae's command-line entry points choose those).
    assert (sys.stdout, sys.stderr) == before[:2]
    assert {k: v for k, v in os.environ.items() if k.startswith("MLFLOW")} == {
        k: v for k, v in before[2].items() if k.startswith("MLFLOW")
    }
    return root, result


def test_two_workers_log_every_key_of_both_epochs_to_mlflow(two_worker_run, abundance_features):
    from mlflow import MlflowClient

    root, result = two_worker_run
    client = MlflowClient(result.mlflow_uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.data.tags["engine"] == "ray"
    assert run.data.params["model.latent_dim"] == "8"
    # Every key the contract names for this run (gated tiny model, depths, labels, bins judged by
    # marker genes only), and no other.
    keys = epoch_keys(gated=True, abundance=True, labeled=True, bins=False, est_bins=True)
    assert set(run.data.metrics) == keys
    for key in keys:
        assert [m.step for m in client.get_metric_history(result.mlflow_run_id, key)] == [0, 1], key
    # The same outputs and tags as every engine's (test_tracking and test_sweep check them too).
    assert {a.path for a in client.list_artifacts(result.mlflow_run_id)} == {*ARTIFACT_FILES, "checkpoints"}
    checkpoints = {a.path for a in client.list_artifacts(result.mlflow_run_id, "checkpoints")}
    assert checkpoints == {f"checkpoints/{name}" for name in CHECKPOINT_FILES}
    assert run.data.tags.items() >= run_tags("ray", "two", with_abundance(2)).items()
    assert run.data.params["data.path"] == str(abundance_features.absolute())


def validated_locally(ckpt, features):
    """The checkpoint's model validated by the local engine on its own validation split."""
    _, val = load_splits(features, ckpt.config.data)
    beta = ckpt.config.loss.beta_at(ckpt.epoch)
    batches = val.validation_batches(64)
    return validate_epoch(
        ckpt.build_model(), batches, ckpt.config.loss, beta, device=torch.device("cpu"), keep_embeddings=True
    )


def test_checkpoint_reproduces_the_reported_validation_loss(two_worker_run, abundance_features):
    _, result = two_worker_run
    ckpt = load_checkpoint(result.best_checkpoint)
    reported = ckpt.metrics["val/loss"]
    assert ckpt.config.model.abundance_samples == 3 and bool(ckpt.build_model().depth_fitted)
    validation = validated_locally(ckpt, abundance_features)
    # The workers split the validation set and all-reduced their sums: the whole set, exactly.
    assert validation.metrics["val/loss"] == pytest.approx(reported, rel=1e-5)
    assert validation.metrics["val/ce_abundance"] == pytest.approx(ckpt.metrics["val/ce_abundance"], rel=1e-5)
    # They gathered every rank's embeddings with their must-link keys: the same pairs and ranks.
    assert 0.5 < ckpt.metrics["val/link_agreement"] <= 1
    local = link_agreement(validation.embeddings, validation.links)
    assert ckpt.metrics["val/link_agreement"] == pytest.approx(local, abs=1e-3)
    assert [m["epoch"] for m in result.history] == [0, 1]


def kill_a_worker_at_the_first_report(marker: Path):
    """A Ray Train callback that SIGKILLs one training worker when the first epoch's report
    is registered (an event of the run, not a clock) and writes its pid to `marker`."""
    from ray.train import UserCallback

    class KillAWorker(UserCallback):  # runs in the controller, another process: the marker tells the test
        def after_report(self, run_context, metrics, checkpoint):
            if marker.exists():
                return
            victim = train_workers(alive_only=True)[-1]
            os.kill(victim.pid, signal.SIGKILL)
            marker.write_text(str(victim.pid))

    return KillAWorker()


def test_rerunning_the_same_name_resumes_resident_and_survives_a_killed_worker(
    two_worker_run, abundance_features, capfd
):
    """The shared run again by name, two epochs more, with resident shards (train.resident=on:
    each worker reads its shard once and shuffles it itself): it resumes from its checkpoint
    and continues its MLflow run; a worker SIGKILLed at the first report is replaced and
    training goes on from the last checkpoint, each epoch counted and logged once; the
    resident epochs train and validate on the streamed epochs' contigs."""
    from mlflow import MlflowClient

    from kmervae.distributed.console import quiet_console
    from kmervae.distributed.ray_engine import TRAIN_LOG, ray_outputs

    root, first = two_worker_run
    storage, marker = root / "storage", root / "killed.pid"
    with quiet_console(ray_outputs(storage, "two") / TRAIN_LOG, relay=True):  # as `kmervae train` runs it
        again = fit_ray(
            abundance_features,
            with_abundance(4).with_overrides(["train.resident=on"]),
            workers=2,
            use_cpu=True,
            name="two",
            storage=storage,
            mlflow_dir=root,
            log=lambda line: None,
            callbacks=[kill_a_worker_at_the_first_report(marker)],
        )
    assert marker.exists(), "no worker was killed: the test did not exercise recovery"
    assert again.mlflow_run_id == first.mlflow_run_id
    assert [m["epoch"] for m in again.history] == [0, 1, 2, 3]  # no epoch counted twice
    assert again.history[:2] == first.history  # epochs 0-1 came from the checkpoint, not retrained
    for resident, streamed in zip(again.history[2:], first.history, strict=True):
        assert resident["val/frac_present"] == pytest.approx(streamed["val/frac_present"], rel=1e-12)  # the data's
        trained = [round(m["samples_per_s"] * m["train_s"]) for m in (resident, streamed)]
        assert trained[0] == trained[1]  # samples trained in the epoch
    # The resident workers validated exactly the validation split: the checkpointed model,
    # validated here on the local engine's split, gives the loss the workers reported.
    ckpt = load_checkpoint(again.last_checkpoint)
    assert validated_locally(ckpt, abundance_features).metrics["val/loss"] == pytest.approx(
        ckpt.metrics["val/loss"], rel=1e-5
    )
    # The console shows the epoch table (rank 0's marked lines), not Ray's account of the dead
    # worker, which is in train.log beside the checkpoints.
    shown = capfd.readouterr().err.splitlines()
    assert any(line.startswith("epoch ") and "mse_7_pres" in line for line in shown), shown
    assert any(line.startswith("4/4") for line in shown) and not any("RayTrainWorker" in line for line in shown)
    assert "RayTrainWorker" in (again.best_checkpoint.parent / "train.log").read_text()
    # One MLflow run, finished, with every epoch's metrics logged exactly once.
    client = MlflowClient(again.mlflow_uri)
    run = client.get_run(again.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert len(client.search_runs([run.info.experiment_id])) == 1
    for key in ("val/loss", "train/loss", "val/knn_acc"):
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == [0, 1, 2, 3], key
    last = client.get_metric_history(run.info.run_id, "val/loss")
    assert {m.step: m.value for m in last}[3] == pytest.approx(again.history[3]["val/loss"])


def test_impossible_resource_requests_fail_at_once():
    with pytest.raises(ConfigError, match=r"cannot fit 8 worker\(s\): the cluster has 2 CPU\(s\)"):
        plan_resources({"CPU": 2.0}, 8, None, use_cpu=True)
    with pytest.raises(ConfigError, match=r"cannot fit 2 worker\(s\) x 1 GPU: the cluster has 0 GPU\(s\)"):
        plan_resources({"CPU": 16.0}, 2, 1.0, use_cpu=False)
    plan = plan_resources({"CPU": 2.0}, 2, None, use_cpu=False)
    assert (plan.workers, plan.cpus_per_worker, plan.gpus_per_worker) == (2, 0.5, 0.0)
    gpu = plan_resources({"CPU": 16.0, "GPU": 4.0}, 4, None, use_cpu=False)
    assert gpu.gpus_per_worker == 1.0 and gpu.cpus_per_worker == 1.0


def test_workers_are_planned_on_the_cluster_s_capacity_not_on_what_is_free_now(local_ray):
    """A job that just ended (a sweep stopped with `ray job stop`) holds its CPUs a few seconds
    more: the plan counts the whole cluster, and Ray queues the workers until they are free."""
    from kmervae.distributed.ray_engine import cluster_capacity

    @ray.remote(num_cpus=1.5)
    class Holder:
        def ready(self) -> bool:
            return True

    holder = Holder.remote()
    try:
        ray.get(holder.ready.remote())
        assert ray.available_resources().get("CPU", 0) <= 0.5  # what a plan on free CPUs would refuse
        plan = plan_resources(cluster_capacity(), 2, None, use_cpu=True)
        assert (plan.workers, plan.cpus_per_worker) == (2, 0.5)
    finally:
        ray.kill(holder)


def test_impossible_request_on_the_live_cluster_is_one_line_before_training(
    local_ray, example_features, tmp_path, capsys, monkeypatch
):
    """`kmervae train --workers 16` on the running 2-CPU cluster: one line, exit 2, before any
    actor starts, nothing written."""
    from kmervae.cli import main

    monkeypatch.chdir(tmp_path)
    with ray_untouched():
        code = main(["train", str(example_features), "--workers", "16", "--cpu", "--no-mlflow", "--name", "big"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("kmervae train: error: cannot fit 16 worker(s): the cluster has 2 CPU(s)"), err
    assert not list(tmp_path.iterdir())


def test_a_foreign_parquet_is_refused_before_any_worker_starts(tmp_path, example_features):
    bad = tmp_path / "bad"
    bad.mkdir()
    pq.write_table(pa.table({"contig_id": ["a"], "kmer7": [np.zeros(3).tobytes()]}), bad / "part-0.parquet")
    with ray_untouched(), pytest.raises(InputError, match="not a kmervae feature file"):
        fit_ray(bad, tiny(1), workers=1, use_cpu=True, storage=tmp_path, experiment=None)


@pytest.mark.parametrize(
    "mode, max_samples, val_split",
    [("stream", None, "contig"), ("materialize", 400, "genome")],  # each mode, subsampling and split once
)
def test_ray_data_and_the_local_engine_pick_the_same_contigs(
    local_ray, abundance_features, max_samples, mode, val_split
):
    from kmervae.base.feature_table import dataset_files, label_vocabulary
    from kmervae.core.config import DataConfig
    from kmervae.core.data import split_hash
    from kmervae.distributed.ray_data import build_datasets

    cfg = DataConfig(max_samples=max_samples, val_split=val_split, val_fraction=0.3)
    files = dataset_files(abundance_features)
    train_ds, val_ds = build_datasets(files, cfg, label_vocabulary(files), seed=0, mode=mode)
    train, val = load_splits(abundance_features, cfg)
    for ds, local in ((train_ds, train), (val_ds, val)):
        rows = ds.to_pandas()
        expected = (split_hash(local.contig_ids, cfg.split_salt) * 2**31).astype(np.int64)  # the contig's fingerprint
        assert sorted(rows["bucket"]) == sorted(expected)
        # each contig's depths travel with it
        depths = sorted(zip(expected.tolist(), map(tuple, local.batch.abundance.tolist()), strict=True))
        assert sorted(zip(rows["bucket"], (tuple(v) for v in rows["abundance"]), strict=True)) == depths
        assert sorted(rows["length"]) == sorted(local.batch.length.tolist())
        if "label" in rows:  # validation carries label codes, the same as the local engine's
            assert sorted(rows["label"]) == sorted(local.codes.tolist())
    assert len(train) + len(val) == (max_samples or files.rows)
