"""The branched VAE and its feature transform: shapes, dtypes, parameter counts, gating, GC."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from kmervae.core.config import PRESETS
from kmervae.core.model import N_OUTPUT, BranchedVAE, FeatureTransform, count_parameters
from tests.conftest import random_batch


def test_parameter_counts_of_the_seed_presets():
    assert count_parameters(BranchedVAE(dataclasses.replace(PRESETS["final"], gate_k7=False))) == 19_447_755
    assert count_parameters(BranchedVAE(PRESETS["final"])) == 27_844_555
    assert count_parameters(BranchedVAE(PRESETS["outline"])) == 94_454_819


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_shapes_and_dtypes_for_every_preset(name):
    cfg = PRESETS[name]
    depths = ()
    if cfg.uses_abundance:  # the trainers set the samples from the features (RunConfig.for_data)
        cfg = dataclasses.replace(cfg, abundance_samples=2)
        depths = (torch.rand(3, 2) * 10,)
    model = BranchedVAE(cfg)
    out = model(*random_batch(3), *depths)
    assert out.recon.shape == (3, N_OUTPUT) == (3, 8361) and out.target.shape == (3, 8361)
    assert out.mu.shape == out.log_var.shape == (3, cfg.latent_dim)
    assert out.values.shape == (3, 8192) and out.gc_branches.shape == (3, 3)
    assert (out.gate_logits is not None) == cfg.gate_k7
    for tensor in (out.recon, out.mu, out.log_var, out.values):
        assert tensor.dtype == torch.float32 and torch.isfinite(tensor).all()


def test_without_the_length_input_the_embedding_ignores_length():
    torch.manual_seed(0)
    cfg = dataclasses.replace(PRESETS["tiny"], length_input=False)
    model = BranchedVAE(cfg).eval()
    length, gc, k7, k4, k3 = random_batch(4)
    mu = model(length, gc, k7, k4, k3).mu
    torch.testing.assert_close(model(length * 7, gc, k7, k4, k3).mu, mu)  # same counts, other lengths
    with_length = BranchedVAE(PRESETS["tiny"]).eval()
    assert not torch.allclose(with_length(length * 7, gc, k7, k4, k3).mu, with_length(length, gc, k7, k4, k3).mu)
    assert model.enc7[0][0].in_features == with_length.enc7[0][0].in_features - 1


def test_gating_mixes_values_with_the_floor():
    torch.manual_seed(0)
    model = BranchedVAE(PRESETS["tiny"]).eval()
    out = model(*random_batch())
    p = torch.sigmoid(out.gate_logits)
    expected = p * out.values + (1 - p) * math.log(1e-6)
    torch.testing.assert_close(out.recon[:, :8192], expected)
    ungated = BranchedVAE(dataclasses.replace(PRESETS["tiny"], gate_k7=False)).eval()
    out = ungated(*random_batch())
    assert out.gate_logits is None
    torch.testing.assert_close(out.recon[:, :8192], out.values)


def test_output_gc_is_the_mean_of_the_three_branch_predictions():
    model = BranchedVAE(PRESETS["tiny"]).eval()
    out = model(*random_batch())
    torch.testing.assert_close(out.recon[:, -1], out.gc_branches.mean(dim=1))


def test_transform_follows_the_design():
    length, gc, k7, k4, k3 = random_batch(2)
    x = FeatureTransform(1e-6)(length, gc, k7, k4, k3)
    k7n = k7.double().numpy()
    expected = np.log(k7n / k7n.sum(axis=1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(x.kmer7.numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(x.log_length[:, 0].numpy(), np.log10(length.numpy()), rtol=1e-6)
    np.testing.assert_allclose(x.gc[:, 0].numpy(), gc.numpy())
    absent = k7 == 0
    assert torch.allclose(x.kmer7[absent], torch.tensor(math.log(1e-6)), atol=1e-4)
    assert x.target().shape == (2, 8361)


def test_eval_mode_is_deterministic_and_training_samples():
    model = BranchedVAE(PRESETS["tiny"])
    batch = random_batch()
    model.eval()
    torch.testing.assert_close(model(*batch).recon, model(*batch).recon)
    model.train()
    a, b = model(*batch), model(*batch)
    assert not torch.equal(a.recon, b.recon)  # z is sampled while training


def test_input_dropout_acts_in_training_only():
    """model.input_dropout=0.5 makes two training-mode encodings of one batch differ (random
    masks on the k-mer inputs); in eval mode, and with the default 0, they are identical."""
    batch = random_batch(8)

    def encode_twice(model):
        x = model.transform(*batch)
        return model.encode(x)[0], model.encode(x)[0]

    torch.manual_seed(0)
    noisy = BranchedVAE(dataclasses.replace(PRESETS["tiny"], input_dropout=0.5))
    a, b = encode_twice(noisy.train())
    assert not torch.allclose(a, b)
    a, b = encode_twice(noisy.eval())
    torch.testing.assert_close(a, b)
    a, b = encode_twice(BranchedVAE(PRESETS["tiny"]).train())
    torch.testing.assert_close(a, b)


def test_input_normalisations_do_what_they_say():
    batch = random_batch(16)
    clr = BranchedVAE(dataclasses.replace(PRESETS["tiny"], input_norm="clr"))
    for block in clr.normalize(clr.transform(*batch)):
        torch.testing.assert_close(block.mean(dim=1), torch.zeros(16), atol=1e-4, rtol=0)  # centred per contig
    zscore = BranchedVAE(dataclasses.replace(PRESETS["tiny"], input_norm="zscore"))
    x = zscore.transform(*batch)
    values = torch.cat([x.kmer7, x.kmer4, x.kmer3], dim=1).double()
    zscore.set_input_norm(values.sum(0), values.pow(2).sum(0), len(values))
    k7, k4, k3 = zscore.normalize(x)
    varying = values.std(dim=0) > 1e-3
    normalised = torch.cat([k7, k4, k3], dim=1)[:, varying]
    torch.testing.assert_close(normalised.mean(0), torch.zeros(normalised.shape[1]), atol=1e-4, rtol=0)
    torch.testing.assert_close(normalised.std(0, unbiased=False), torch.ones(normalised.shape[1]), atol=1e-3, rtol=0)
    assert bool(zscore.norm_fitted) and "norm_mean7" in zscore.state_dict()  # saved with the weights


def test_cross_view_reconstructs_the_other_view():
    model = BranchedVAE(PRESETS["tiny"]).eval()
    a, b = random_batch(4, seed=1), random_batch(4, seed=2)
    out = model(*a, target=b)
    torch.testing.assert_close(out.target, model.transform(*b).target())
    torch.testing.assert_close(out.mu, model(*a).mu)  # the encoder only ever sees view A
