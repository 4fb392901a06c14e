"""The abundance branch: its size by hand, VAMB's loss, one sample, training that its checkpoint
reproduces, and exports that read the abundance column as PyTorch does."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnxruntime
import pytest
import torch

from kmervae.apply.embed import decode_batch, embed
from kmervae.apply.evaluate import abundance_profile, evaluate
from kmervae.apply.export import Encoder, example_inputs, export
from kmervae.base.errors import ConfigError, InputError
from kmervae.base.feature_table import FeatureTable, dataset_files
from kmervae.core.checkpoint import load_checkpoint
from kmervae.core.config import PRESETS, RunConfig
from kmervae.core.data import load_splits
from kmervae.core.engine import validate_epoch
from kmervae.core.loss import abundance_term, vae_loss
from kmervae.core.model import BranchedVAE, count_parameters
from kmervae.core.run_setup import fit_local
from tests.conftest import ABUNDANCE_SAMPLES as SAMPLES


def tiny(widths=(8, 4), samples=SAMPLES):
    return dataclasses.replace(PRESETS["tiny"], abundance_widths=widths, abundance_samples=samples)


def test_the_branch_adds_exactly_its_layers():
    # tiny: branch ends 32 (7-mers) + 16 + 16, trunk 32; abundance (8, 4) on 3 samples + log depth.
    extra = (
        (4 * 8 + 8 + 2 * 8) + (8 * 4 + 4 + 2 * 4)  # enc_ab: 4 -> 8 -> 4, each Linear + BatchNorm
        + 4 * 32  # enc_trunk's first layer reads 4 more inputs
        + (4 * 32 + 4 + 2 * 4)  # dec_trunk's last layer writes the 4 more (weights, bias, BatchNorm)
        + 4 * (32 + 16 + 16)  # proj7/4/3 read the wider concat
        + (68 * 4 + 4 + 2 * 4)  # proj_ab: concat 68 -> 4
        + (4 * 8 + 8 + 2 * 8)  # dec_ab: 4 -> 8
        + (8 * 4 + 4)  # head_ab: 8 -> 3 share logits + log depth
    )  # fmt: skip
    assert count_parameters(BranchedVAE(tiny())) - count_parameters(BranchedVAE(PRESETS["tiny"])) == extra == 1000
    assert not hasattr(BranchedVAE(PRESETS["tiny"]), "head_ab")  # empty widths: the seed's architecture


def test_vamb_loss_weights_and_one_sample():
    assert abundance_term(2.0, 0.5, 4) == pytest.approx(3 / (4 * math.log(4)) * 2.0 + 0.5 / 4)
    assert abundance_term(2.0, 0.5, 1) == 0.5  # one sample: the shares are constant, only depth counts
    model = BranchedVAE(tiny(samples=1)).train()
    batch = [t[:4] for t in example_inputs(model.cfg, 4)]
    out = model(*batch)
    assert torch.allclose(out.shares, torch.ones(4, 1)) and out.log_depth.shape == (4, 1)
    terms = vae_loss(out, batch[2], RunConfig().loss, beta=1.0)
    assert torch.isfinite(terms.loss) and terms.ce_abundance.abs() < 1e-6
    terms.loss.backward()
    assert model.enc_ab[0][0].weight.grad.abs().sum() > 0  # depth alone trains the branch


def test_the_log_ratio_input_counts_a_ratio_alike_in_every_sample():
    model = BranchedVAE(dataclasses.replace(tiny(samples=2), abundance_input="log_ratio")).eval()
    model.set_depth_scale(torch.tensor([1.0, 4.0], dtype=torch.float64), 1.0)  # sample 2 sequenced 4x deeper
    depth = torch.tensor([[2.0, 8.0], [1.0, 16.0], [0.0, 4.0]])
    ratios = model.log_ratios(depth)
    # scaled [2, 2]: alike; [1, 4]: log 4 apart, centred; [0 -> floor 0.01, 1]: log 100 apart.
    expected = torch.tensor([[0.0, 0.0], [-math.log(4) / 2, math.log(4) / 2], [-math.log(100) / 2, math.log(100) / 2]])
    torch.testing.assert_close(ratios, expected)
    torch.testing.assert_close(model.log_ratios(depth[:2] * 3), ratios[:2])  # the total goes to the log depth only
    shares, _ = model.abundance_view(depth)
    assert shares[1, 1] - shares[1, 0] == pytest.approx(0.6)  # VAMB's shares of the same ratio
    # Same parameters, other input: the encoder reads the log ratios instead of the shares.
    vamb = BranchedVAE(tiny(samples=2)).eval()
    vamb.load_state_dict(model.state_dict())
    batch = [t[:3] for t in example_inputs(model.cfg, 3)][:5] + [depth]
    assert count_parameters(vamb) == count_parameters(model)
    assert not torch.allclose(vamb(*batch).mu, model(*batch).mu)
    torch.testing.assert_close(vamb(*batch).target_shares, model(*batch).target_shares)  # the same target


def test_a_branch_without_abundance_is_refused(example_features):
    config = RunConfig(model=PRESETS["tiny"]).with_overrides(["model.abundance_widths=[8]"])
    with pytest.raises(ConfigError, match=r"model.abundance_widths=\[8\] needs features with abundance"):
        fit_local(example_features, config, "unused")


def test_training_with_abundance_reproduces_validation_and_exports_agree(
    abundance_features, example_features, tmp_path
):
    config = RunConfig(model=PRESETS["tiny"]).with_overrides(
        [
            "model.abundance_widths=[16,8]",
            "model.input_norm=zscore",
            "loss.cross_view=true",
            "train.epochs=1",
            "train.nc_bins=true",
        ]
    )
    result = fit_local(abundance_features, config, tmp_path, log=lambda line: None)
    last = result.history[-1]
    assert last["val/ce_abundance"] > 0 and math.isfinite(last["val/mse_abundance"])
    assert last["val/nc_bins"] in range(0, 6)  # the validation contigs binned like any embedding
    ckpt = load_checkpoint(result.last_checkpoint)
    assert ckpt.config.model.abundance_samples == SAMPLES
    model = ckpt.build_model()
    assert bool(model.depth_fitted) and model.depth_scale.ne(1).all()  # fitted on the training contigs
    train, val = load_splits(abundance_features, ckpt.config.data)
    assert val.batch.abundance.shape == (len(val), SAMPLES)
    shares, log_depth = model.abundance_view(train.batch.abundance)  # fitted on exactly these contigs
    assert log_depth.mean().abs() < 1e-4 and (log_depth.std(unbiased=False) - 1).abs() < 1e-4
    np.testing.assert_allclose(shares.sum(dim=1).numpy(), 1.0, rtol=1e-6)
    np.testing.assert_allclose((train.batch.abundance / model.depth_scale).mean(dim=0).numpy(), 1.0, rtol=1e-5)
    beta = ckpt.config.loss.beta_at(ckpt.epoch)
    again, *_ = validate_epoch(model, val.validation_batches(256), ckpt.config.loss, beta, device=torch.device("cpu"))
    assert again["val/loss"] == pytest.approx(last["val/loss"], rel=1e-6)
    assert again["val/ce_abundance"] == pytest.approx(last["val/ce_abundance"], rel=1e-6)

    # exports read the abundance column and agree with PyTorch
    files = dataset_files(abundance_features)
    import pyarrow.parquet as pq

    batch = decode_batch(next(pq.ParquetFile(files.paths[0]).iter_batches(batch_size=37)), files.format)
    with torch.no_grad():
        reference = Encoder(model)(*(torch.from_numpy(batch[n]) for n in files.format.input_columns)).numpy()
    script = torch.jit.load(str(export(str(result.last_checkpoint), "torchscript", tmp_path / "e.pt")))
    with torch.no_grad():
        traced = script(*(torch.from_numpy(batch[n]) for n in files.format.input_columns)).numpy()
    session = onnxruntime.InferenceSession(str(export(str(result.last_checkpoint), "onnx", tmp_path / "e.onnx")))
    assert [i.name for i in session.get_inputs()][-1] == "abundance"
    onnx_out = session.run(None, {i.name: batch[i.name] for i in session.get_inputs()})[0]
    np.testing.assert_allclose(traced, reference, atol=1e-5)
    np.testing.assert_allclose(onnx_out, reference, atol=1e-5)
    import mlflow

    pyfunc = mlflow.pyfunc.load_model(str(export(str(result.last_checkpoint), "mlflow", tmp_path / "mlflow-model")))
    assert "abundance" in pyfunc.metadata.get_input_schema().input_names()
    np.testing.assert_allclose(pyfunc.predict(batch), reference, atol=1e-5)

    # embed writes the same rows as the checkpoint gives; features without abundance are refused
    out = embed(str(result.last_checkpoint), abundance_features, tmp_path / "emb.parquet").out
    written = np.stack(pq.read_table(out).column("embedding").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(written[:37], reference, atol=1e-5)
    assert len(written) == len(FeatureTable.from_parquet(abundance_features))
    scores = evaluate(out, abundance_features).scores
    assert {"vae", "tnf_zscore", "tnf_abundance"} <= scores.keys()
    assert scores["tnf_abundance"]["knn1_acc"] >= scores["tnf_zscore"]["knn1_acc"]  # genomes differ in depth here
    with pytest.raises(InputError, match="this model has an abundance branch and these features have no 'abundance'"):
        embed(str(result.last_checkpoint), example_features, tmp_path / "none.parquet")
    assert not (tmp_path / "none.parquet").exists()


def test_thinned_views_split_the_reads_a_depth_implies():
    from kmervae.core.loss import READ_LENGTH, split_depths

    depth = torch.tensor([[6.0, 0.0, 30.0], [0.2, 1.0, 2.0]])
    length = torch.tensor([3000, 150_000])
    generator = torch.Generator().manual_seed(0)
    a, b = split_depths(depth, length, 0.3, generator)
    reads = (depth * length.reshape(-1, 1) / READ_LENGTH).round()  # 120, 0, 600 and 200, 1000, 2000
    # the two views' reads add up to the contig's, and each view's depth is scaled by its share
    np.testing.assert_allclose(
        ((0.3 * a + 0.7 * b) * length.reshape(-1, 1) / READ_LENGTH).numpy(), reads.numpy(), rtol=1e-6
    )
    assert a[0, 1] == b[0, 1] == 0 and not torch.equal(a, b)
    many = torch.stack([split_depths(depth, length, 0.5, generator)[0] for _ in range(400)])
    np.testing.assert_allclose(many.mean(dim=0).numpy(), depth.numpy(), rtol=0.05)  # unbiased


def test_the_abundance_profile_of_the_baseline():
    depth = np.array([[2.0, 0.0], [4.0, 4.0], [0.0, 0.0]])  # sample means 2 and 4/3
    profile = abundance_profile(depth)
    scaled = depth / np.array([2.0, 4 / 3])  # [1, 0], [2, 3], [0, 0]
    shares = np.array([[1.0, 0.0], [0.4, 0.6], [0.5, 0.5]])  # no read: equal shares
    expected = np.hstack([np.log(shares + 1e-3), np.log(np.maximum(scaled.sum(axis=1, keepdims=True), 1e-3))])
    expected = (expected - expected.mean(axis=0)) / expected.std(axis=0)
    np.testing.assert_allclose(profile, expected)


def test_the_metagenome_preset_bins_the_whole_assembly_it_trained_on(abundance_features, tmp_path):
    """data.val_split=all: every contig trains and validates, and val/nc_bins is the count that
    embedding all contigs and binning them as `kmervae bin` does (200 kb bins) gives."""
    from kmervae.apply.embed import read_embeddings
    from kmervae.binning.bins import DEFAULT_MIN_BIN_SIZE, near_complete_bins
    from kmervae.core.config import preset_config

    config = preset_config("metagenome", architecture="tiny").with_overrides(["train.epochs=2", "train.nc_bins=true"])
    result = fit_local(abundance_features, config, tmp_path / "run", log=lambda line: None)
    train, val = load_splits(abundance_features, config.data)
    assert len(train) == len(val) == len(FeatureTable.from_parquet(abundance_features))
    embed(str(result.last_checkpoint), abundance_features, tmp_path / "emb.parquet", progress=False)
    data = read_embeddings(tmp_path / "emb.parquet")
    whole = near_complete_bins(data.vectors, data.labels, data.lengths, min_bin_size=DEFAULT_MIN_BIN_SIZE)
    assert result.history[-1]["val/nc_bins"] == whole
    assert not load_checkpoint(result.last_checkpoint).config.model.length_input
