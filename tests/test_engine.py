"""The single-process engine on real contigs: the loss falls, runs are reproducible, NaN stops."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from kmervae.base.errors import ConfigError, TrainingDiverged
from kmervae.base.feature_table import FeatureTable
from kmervae.base.metric_keys import epoch_keys
from kmervae.core.checkpoint import load_checkpoint
from kmervae.core.config import PRESETS, LossConfig, RunConfig
from kmervae.core.data import CountBatch, InMemoryData, TensorData, held_out_labels, load_splits
from kmervae.core.engine import (
    _CompiledWithFallback,
    autocast,
    make_optimizer,
    make_scheduler,
    resolve_device,
    run_epochs,
    train_epoch,
    validate_epoch,
)
from kmervae.core.model import BranchedVAE
from kmervae.core.run_setup import fit_local
from tests.conftest import random_batch

TIMING = {"samples_per_s", "data_wait_s", "train_s"}


def tiny_config(epochs: int = 4) -> RunConfig:
    return RunConfig(model=PRESETS["tiny"]).with_overrides(
        [f"train.epochs={epochs}", "train.batch_size=64", "train.lr=3e-3"]
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory, example_features):
    out = tmp_path_factory.mktemp("train")
    return fit_local(example_features, tiny_config(), out, log=lambda line: None)


def test_loss_falls_on_real_contigs(trained):
    history = trained.history
    assert len(history) == 4 and [m["epoch"] for m in history] == [0, 1, 2, 3]
    assert history[-1]["train/loss"] < 0.8 * history[0]["train/loss"]
    assert history[-1]["val/loss"] < history[0]["val/loss"]
    assert history[-1]["val/knn_acc"] > 0.5  # five genomes: chance is about 0.2


def test_every_metric_key_is_logged(trained):
    lines = [json.loads(line) for line in (trained.out_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 4
    # Each line holds exactly the keys the contract names for this run (gated, labelled, no depths, no binning).
    expected = epoch_keys(gated=True, abundance=False, labeled=True, bins=False)
    assert all(set(line) == expected for line in lines)


def test_run_folder_describes_the_model(trained):
    assert "total" in (trained.out_dir / "model.txt").read_text()
    assert (trained.out_dir / "model.png").read_bytes()[:4] == b"\x89PNG"


def test_bf16_autocast_stays_close_to_fp32():
    model = BranchedVAE(PRESETS["tiny"]).eval()
    batch = random_batch(8)
    with torch.no_grad():
        full = model(*batch).recon
        with autocast(torch.device("cpu"), "bf16"):
            half = model(*batch).recon.float()
    assert ((half - full).abs().max() / full.abs().max()).item() < 0.05


def test_checkpoints_hold_the_best_and_the_last_epoch(trained):
    best = load_checkpoint(trained.best_checkpoint)
    last = load_checkpoint(trained.last_checkpoint)
    assert last.epoch == 3
    assert best.metrics["val/loss"] == min(m["val/loss"] for m in trained.history)
    assert best.config == tiny_config()


def test_cpu_training_is_reproducible(tmp_path, example_features, trained):
    again = fit_local(example_features, tiny_config(), tmp_path, log=lambda line: None)
    strip = lambda h: [{k: v for k, v in m.items() if k not in TIMING} for m in h]  # noqa: E731
    assert strip(again.history) == strip(trained.history)


def test_non_finite_loss_stops_training_with_the_reason():
    model = BranchedVAE(PRESETS["tiny"])
    length, gc, k7, k4, k3 = random_batch(4)
    gc[0] = float("nan")
    optimizer = torch.optim.Adam(model.parameters())
    with pytest.raises(TrainingDiverged, match="training loss became nan"):
        train_epoch(
            model,
            [(CountBatch(length, gc, k7, k4, k3), None)],
            optimizer,
            LossConfig(),
            1.0,
            device=torch.device("cpu"),
        )


def test_cuda_on_a_cpu_host_is_a_config_error():
    if torch.cuda.is_available():
        pytest.skip("this host has CUDA")
    with pytest.raises(ConfigError, match="no CUDA device"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


def test_validation_after_few_steps_matches_the_training_loss(example_features, tmp_path):
    """Five steps of batch 256: the seed's running average (momentum 0.01) still holds mostly
    BatchNorm's initial statistics, so validation in eval mode sees another model (val/kl in
    the thousands); statistics recomputed with the final weights give a validation loss close
    to the training loss, as for a model that has not yet fitted anything."""

    def first_epoch(bn_stats: str) -> dict[str, float]:
        config = RunConfig(model=PRESETS["tiny"]).with_overrides(
            ["train.epochs=1", "train.batch_size=256", f"train.bn_stats={bn_stats}"]
        )
        return fit_local(example_features, config, tmp_path / bn_stats, log=lambda line: None).history[0]

    recomputed = first_epoch("recompute")
    assert 0.8 < recomputed["val/loss"] / recomputed["train/loss"] < 1.25
    assert recomputed["val/kl"] < 10
    running = first_epoch("ema")
    assert running["val/loss"] / running["train/loss"] > 5  # the distortion this setting removes
    # The checkpoint keeps the statistics validation used: its model, validated again, gives val/loss.
    ckpt = load_checkpoint(tmp_path / "recompute" / "last.pt")
    _, val = load_splits(example_features, ckpt.config.data)
    beta = ckpt.config.loss.beta_at(0)
    again, *_ = validate_epoch(
        ckpt.build_model(), val.validation_batches(256), ckpt.config.loss, beta, device=torch.device("cpu")
    )
    assert again["val/loss"] == pytest.approx(recomputed["val/loss"], rel=1e-6)


def test_every_lever_trains_and_its_checkpoint_reproduces_validation(example_features, tmp_path):
    """Cross-view training with z-scored inputs, free bits and cyclical beta, on genome-level
    validation: the statistics fitted before the first step travel in the checkpoint."""
    levers = [
        "model.input_norm=zscore", "loss.cross_view=true", "loss.free_bits=0.1", "loss.beta_schedule=cyclical",
        "loss.beta_cycle_epochs=2", "data.val_split=genome", "train.epochs=2", "train.batch_size=128",
        "loss.infonce=0.5", "loss.supcon=0.5", "loss.temperature=0.2", "train.nc_bins=true",
    ]  # fmt: skip
    config = RunConfig(model=PRESETS["tiny"]).with_overrides(levers)
    result = fit_local(example_features, config, tmp_path, log=lambda line: None)
    last = result.history[-1]
    assert 0 <= last["val/knn_acc"] <= 1 and -1 <= last["val/kmeans_ari"] <= 1
    genomes = sorted(set(FeatureTable.from_parquet(example_features).labels))
    held_out = len(held_out_labels(genomes, config.data))
    assert last["val/nc_bins"] in range(0, held_out + 1)  # near-complete bins of the held-out genomes
    ckpt = load_checkpoint(result.last_checkpoint)
    model = ckpt.build_model()
    assert bool(model.norm_fitted) and model.norm_std7.ne(1).any()  # fitted, not the initial values
    _, val = load_splits(example_features, ckpt.config.data)
    beta = ckpt.config.loss.beta_at(ckpt.epoch)
    again, *_ = validate_epoch(model, val.validation_batches(256), ckpt.config.loss, beta, device=torch.device("cpu"))
    assert again["val/loss"] == pytest.approx(last["val/loss"], rel=1e-6)


@pytest.mark.parametrize(
    "override, message",
    [
        ("loss.supcon=1", "loss.supcon > 0 trains on genome labels, but these features have none"),
        ("train.nc_bins=true", "train.nc_bins counts near-complete bins against genome labels, but these features"),
    ],
)
def test_a_labelled_setting_on_unlabelled_features_is_refused_before_training(example_features, override, message):
    config = RunConfig(model=PRESETS["tiny"]).with_overrides([override])
    train, val = load_splits(example_features, config.data)
    data = InMemoryData(TensorData(train.batch), TensorData(val.batch), 64, torch.Generator().manual_seed(0))
    model = BranchedVAE(config.model)
    optimizer = make_optimizer(model, config.train, torch.device("cpu"))
    epochs = []
    with pytest.raises(ConfigError, match=message):
        run_epochs(
            model, data, config, optimizer, make_scheduler(optimizer, config.train),
            device=torch.device("cpu"), on_epoch=lambda *args: epochs.append(args),
        )  # fmt: skip
    assert not epochs


def test_fit_local_refuses_a_supervised_loss_on_unlabelled_features_before_writing(example_features, tmp_path):
    import shutil

    import pyarrow.parquet as pq

    unlabeled = tmp_path / "unlabeled"
    shutil.copytree(example_features, unlabeled)
    for part in unlabeled.glob("*.parquet"):
        pq.write_table(pq.read_table(part).drop_columns(["label"]), part)
    config = RunConfig(model=PRESETS["tiny"]).with_overrides(["loss.supcon=1", "train.epochs=1"])
    with pytest.raises(ConfigError, match="loss.supcon > 0 trains on genome labels, but these features have none"):
        fit_local(unlabeled, config, tmp_path / "out", log=lambda line: None)
    assert not (tmp_path / "out").exists()  # nothing partial left behind


def test_compile_falls_back_to_eager_only_when_compiling_fails(tmp_path):
    """A host without a working C++ compiler trains eagerly with a warning; an error of the
    model's own code, or running out of memory, is raised as itself."""
    script = """
import sys, torch
import torch._inductor.config as inductor
inductor.cpp.cxx = ("/nonexistent/c++",)  # a bare host: no C++ compiler for inductor's CPU kernels
from kmervae.core.engine import _CompiledWithFallback
model = torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.LeakyReLU(0.1))
compiled = _CompiledWithFallback(model, log=print)
x = torch.ones(3, 4)
assert torch.equal(compiled(x), model(x))
print("eager", compiled._compiled is None)
"""
    env = dict(os.environ, TORCHINDUCTOR_FORCE_DISABLE_CACHES="1", TORCHINDUCTOR_CACHE_DIR=str(tmp_path))
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert "warning: torch.compile failed (" in ran.stdout and "No working C++ compiler" in ran.stdout
    assert "eager True" in ran.stdout

    class Broken(torch.nn.Module):
        def __init__(self, error: Exception):
            super().__init__()
            self.error = error

        def forward(self, x):
            raise self.error

    for error in (ValueError("the model's own bug"), torch.OutOfMemoryError("out of memory")):
        compiled = _CompiledWithFallback(Broken(error), log=print)
        with pytest.raises(type(error), match=str(error)):
            compiled(torch.ones(2, 4))
        assert compiled._compiled is not None  # still compiled: nothing fell back


def test_cosine_schedule_anneals_to_min_lr_and_resumes_where_it_stopped():
    """train.lr_schedule=cosine: each epoch's rate falls from the scaled lr towards min_lr along half
    a cosine, ending at min_lr after the last epoch; a scheduler restored from its state continues."""
    config = tiny_config(epochs=6).with_overrides(["train.lr_schedule=cosine", "train.min_lr=1e-5"])
    tc = config.train

    def rates(scheduler, optimizer, epochs):
        out = []
        for _ in range(epochs):
            out.append(optimizer.param_groups[0]["lr"])
            scheduler.step(1.0)
        return out

    model = BranchedVAE(config.model)
    optimizer = make_optimizer(model, tc, torch.device("cpu"))
    scheduler = make_scheduler(optimizer, tc)
    whole = rates(scheduler, optimizer, tc.epochs)
    assert whole[0] == pytest.approx(tc.effective_lr)
    assert all(a > b for a, b in zip(whole, whole[1:], strict=False))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(tc.min_lr)  # after the last epoch
    midway = whole[tc.epochs // 2]
    assert midway == pytest.approx((tc.effective_lr + tc.min_lr) / 2)  # cos(pi / 2) = 0: halfway in rate

    optimizer = make_optimizer(model, tc, torch.device("cpu"))
    first = make_scheduler(optimizer, tc)
    head = rates(first, optimizer, 2)
    state = first.state_dict()
    optimizer = make_optimizer(model, tc, torch.device("cpu"))
    resumed = make_scheduler(optimizer, tc)
    resumed.load_state_dict(state)
    for group in optimizer.param_groups:  # the optimizer's own state carries its rate (checkpoint.py restores both)
        group["lr"] = resumed.get_last_lr()[0]
    assert head + rates(resumed, optimizer, tc.epochs - 2) == pytest.approx(whole)
