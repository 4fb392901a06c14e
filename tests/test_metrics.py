"""Epoch metrics: exact accumulation, every metric key of docs/contracts.md, active units, kNN accuracy,
view agreement."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kmervae.base.metric_keys import VAL_LINK_AGREEMENT, VAL_VIEW_AGREEMENT, VALIDATION, epoch_keys
from kmervae.core.config import PRESETS, LossConfig
from kmervae.core.data import CountBatch, ValidationBatch, link_keys
from kmervae.core.engine import validate_epoch
from kmervae.core.loss import vae_loss
from kmervae.core.metrics import EpochMetrics, knn_accuracy, link_agreement, view_agreement
from kmervae.core.model import BranchedVAE
from tests.conftest import random_batch


@pytest.mark.parametrize("gated", [True, False])
def test_batched_accumulation_equals_the_whole_set(gated):
    import dataclasses

    model = BranchedVAE(dataclasses.replace(PRESETS["tiny"], gate_k7=gated)).eval()
    batch = random_batch(10, seed=3)
    cfg = LossConfig(w4=0.5, gate_bce_weight=2.0)
    with torch.no_grad():
        whole = model(*batch)
    one = EpochMetrics(8, gated)
    one.update(whole, batch[2], cfg)
    many = EpochMetrics(8, gated)
    for lo, hi in [(0, 3), (3, 4), (4, 10)]:
        with torch.no_grad():
            many.update(model(*(t[lo:hi] for t in batch)), batch[2][lo:hi], cfg)
    a, b = one.compute(cfg, 0.5), many.compute(cfg, 0.5)
    # The validation sums make every validation key of the contract but the two agreement scores
    # (computed from the embeddings by the engine).
    contract = epoch_keys(gated=gated, abundance=False, labeled=False, bins=False)
    assert set(a) == {k for k in contract if k.startswith(VALIDATION)} - {VAL_VIEW_AGREEMENT, VAL_LINK_AGREEMENT}
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-6), key  # forward passes differ at float32 rounding
    # The epoch loss is the loss formula on the whole set, not a mean of batch losses.
    assert a["val/loss"] == pytest.approx(vae_loss(whole, batch[2], cfg, 0.5).loss.item(), rel=1e-5)


def test_fractions_and_gate_accuracy_by_hand():
    model = BranchedVAE(PRESETS["tiny"]).eval()
    batch = random_batch(4)
    with torch.no_grad():
        out = model(*batch)
    m = EpochMetrics(8, True)
    m.update(out, batch[2], LossConfig())
    values = m.compute(LossConfig(), 1.0)
    present = (batch[2] > 0).numpy()
    assert values["val/frac_present"] == pytest.approx(present.mean())
    assert values["val/gate_acc"] == pytest.approx(((out.gate_logits.numpy() > 0) == present).mean())


def test_active_units_count_varying_latent_means():
    m = EpochMetrics(3, False)
    mu = torch.stack([torch.linspace(-1, 1, 50), torch.full((50,), 0.3), torch.linspace(0, 0.05, 50)], dim=1)
    m.state[len(m.state) - 6 : len(m.state) - 3] += mu.double().sum(0)
    m.state[len(m.state) - 3 :] += mu.double().pow(2).sum(0)
    m.state[0] = 50
    assert m.active_units() == 1  # only the first varies by more than 0.01


def test_knn_accuracy_separable_and_random():
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 1, size=(4, 16)) * 10
    labels = [f"g{i % 4}" for i in range(200)]
    x = torch.tensor(np.stack([centers[i % 4] + rng.normal(0, 0.1, 16) for i in range(200)]))
    assert knn_accuracy(x, labels) == 1.0
    noise = torch.tensor(rng.normal(0, 1, size=(400, 16)))
    random_labels = [f"g{v}" for v in rng.integers(0, 4, 400)]
    assert 0.1 < knn_accuracy(noise, random_labels) < 0.45
    assert np.isnan(knn_accuracy(x[:3], labels[:3]))


def test_view_agreement_by_hand():
    """Share of other contigs' opposite halves farther (cosine) than the partner, both directions."""
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0]])
    assert view_agreement(a, a * 3) == 1.0  # every half finds its partner first (norms drop out)
    # Contigs 0 and 1 swap their B halves. From A: contig 0 has 1 of 2 farther, contig 1 none (a tie
    # at cosine 0 is not farther), contig 2 both; from B: 0, 1 and 2. (3 + 3) / (2 * 3 * 2).
    b = torch.tensor([[0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]])
    assert view_agreement(a, b) == 0.5


def test_link_agreement_by_hand():
    """Consecutive fragments of one record are pairs; each member ranks its partner among the others."""
    ids = ["S:1-5000", "R:5001-10000", "unfragmented", "R:1-5000"]  # one pair: rows 3 and 1
    links = torch.from_numpy(link_keys(ids))
    x = torch.tensor([[0.6, 0.8], [0.0, 1.0], [0.0, -1.0], [2.0, 0.0]])
    # From row 3 (partner at cosine 0): row 0 is nearer (0.6), row 2 a tie (0): 0.5 of 2.
    # From row 1 (partner at 0): row 0 nearer (0.8), row 2 farther (-1): 1 of 2. (0.25 + 0.5) / 2.
    assert link_agreement(x, links) == 0.375
    assert link_agreement(torch.ones(4, 3), links) == 0.5  # collapsed: every other contig ties
    # Three fragments make two pairs (1-2 and 2-3, not 1-3). Points on the unit circle at angles
    # 0.3, 0.1, 0 (record R) and pi, pi - 0.1 (S): only fragment 2 against its partner 1 finds a
    # nearer other (fragment 3): 2 of 3; the other five directions 3 of 3.
    ids = ["R:1-10", "R:11-20", "R:21-30", "S:1-10", "S:11-20"]
    angles = torch.tensor([0.3, 0.1, 0.0, math.pi, math.pi - 0.1], dtype=torch.float64)
    x = torch.stack([angles.cos(), angles.sin()], dim=1)
    assert link_agreement(x, torch.from_numpy(link_keys(ids))) == pytest.approx(17 / 18)
    assert np.isnan(link_agreement(x[:3], torch.from_numpy(link_keys(["a", "b", "c"]))))  # no pairs


def test_validation_embeds_the_same_two_halves_every_time():
    model = BranchedVAE(PRESETS["tiny"])
    batches = [ValidationBatch(CountBatch(*random_batch(6, seed=s)), None, None) for s in (1, 2)]
    run = lambda: validate_epoch(model, batches, LossConfig(), 1.0, device=torch.device("cpu"), view_contigs=8)  # noqa: E731
    views = run().views
    assert views.shape == (8, 2, 8)  # the first 8 contigs: all of batch 1, 2 of batch 2
    assert not torch.equal(views[:, 0], views[:, 1])  # two different halves
    torch.testing.assert_close(run().views, views, rtol=0, atol=0)  # the same halves every epoch
