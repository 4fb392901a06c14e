"""The loss against values computed by hand (numpy) on a small batch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kmervae.core.config import LossConfig
from kmervae.core.data import CountBatch
from kmervae.core.engine import training_views
from kmervae.core.loss import contrastive_loss, info_nce, split_views, supervised_contrastive, vae_loss
from kmervae.core.model import VAEOutput


def make_output(gated: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    batch, latent = 3, 4
    counts7 = rng.integers(0, 3, size=(batch, 8192))
    target = rng.normal(-8, 3, size=(batch, 8361))
    recon = target + rng.normal(0, 0.5, size=(batch, 8361))
    values = rng.normal(-8, 3, size=(batch, 8192))
    gate = rng.normal(0, 2, size=(batch, 8192)) if gated else None
    mu = rng.normal(0, 1, size=(batch, latent))
    log_var = rng.normal(0, 0.3, size=(batch, latent))
    t = lambda a: None if a is None else torch.tensor(a, dtype=torch.float32)  # noqa: E731
    out = VAEOutput(t(recon), t(mu), t(log_var), t(gate), t(values), torch.zeros(batch, 3), t(target))
    return (
        out,
        torch.tensor(counts7),
        dict(counts7=counts7, target=target, recon=recon, values=values, gate=gate, mu=mu, log_var=log_var),
    )


def expected_terms(a, cfg: LossConfig, beta: float, gated: bool) -> dict[str, float]:
    target, recon = a["target"], a["recon"]
    mse = lambda x, y: float(np.mean((x - y) ** 2))  # noqa: E731
    mse4 = mse(recon[:, 8192:8328], target[:, 8192:8328])
    mse3 = mse(recon[:, 8328:8360], target[:, 8328:8360])
    mse_gc = mse(recon[:, 8360:], target[:, 8360:])
    if gated:
        present = (a["counts7"] > cfg.presence_threshold).astype(float)
        p = 1 / (1 + np.exp(-a["gate"]))
        bce = float(np.mean(-(present * np.log(p) + (1 - present) * np.log(1 - p))))
        value_mse = float(((a["values"] - target[:, :8192]) ** 2 * present).sum() / present.sum())
        l7 = cfg.gate_bce_weight * bce + value_mse
    else:
        l7 = mse(recon[:, :8192], target[:, :8192])
    kl = float(np.mean(-0.5 * np.sum(1 + a["log_var"] - a["mu"] ** 2 - np.exp(a["log_var"]), axis=1)))
    rec = cfg.scale * (cfg.w7 * l7 + cfg.w4 * mse4 + cfg.w3 * mse3 + cfg.wgc * mse_gc)
    return {"loss": rec + beta * kl, "recon": rec, "kl": kl, "l7": l7, "mse4": mse4, "mse3": mse3, "mse_gc": mse_gc}


@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize(
    "cfg, beta",
    [
        (LossConfig(), 1.0),
        (LossConfig(w7=2.0, w4=0.5, w3=0.0, wgc=3.0, scale=0.1, gate_bce_weight=4.0, presence_threshold=1), 0.25),
    ],
)
def test_loss_terms_match_hand_computation(gated, cfg, beta):
    out, counts7, arrays = make_output(gated)
    terms = vae_loss(out, counts7, cfg, beta)
    expected = expected_terms(arrays, cfg, beta, gated)
    for name, value in expected.items():
        assert getattr(terms, name).item() == pytest.approx(value, rel=1e-4), name
    assert (terms.gate_bce is None) == (not gated)


def test_kl_is_zero_for_the_prior():
    out, counts7, _ = make_output(False)
    out = out._replace(mu=torch.zeros(3, 4), log_var=torch.zeros(3, 4))
    assert vae_loss(out, counts7, LossConfig(), 1.0).kl.item() == 0.0


def test_presence_is_decided_on_counts():
    out, counts7, _ = make_output(True)
    none_present = vae_loss(out, torch.zeros_like(counts7), LossConfig(), 1.0)
    assert none_present.value_mse.item() == 0.0  # no present 7-mer: no value error, only the gate's
    assert math.isfinite(none_present.loss.item())


def test_free_bits_floor_each_dimension_of_the_kl_term_and_leave_the_reported_kl_alone():
    # Two latent dimensions: one at the prior (KL 0), one with mu = 2 (KL = mu^2 / 2 = 2 nats).
    mu = torch.tensor([[0.0, 2.0], [0.0, 2.0]])
    log_var = torch.zeros(2, 2)
    out = VAEOutput(
        torch.zeros(2, 8361), mu, log_var, None, torch.zeros(2, 8192), torch.zeros(2, 3), torch.zeros(2, 8361)
    )
    counts = torch.zeros(2, 8192, dtype=torch.int64)
    plain = vae_loss(out, counts, LossConfig(), beta=1.0)
    floored = vae_loss(out, counts, LossConfig(free_bits=0.5), beta=1.0)
    assert plain.kl.item() == pytest.approx(2.0) and floored.kl.item() == pytest.approx(2.0)  # reported: true KL
    assert plain.loss.item() == pytest.approx(plain.recon.item() + 2.0)
    assert floored.loss.item() == pytest.approx(floored.recon.item() + 0.5 + 2.0)  # max(0, 0.5) + max(2, 0.5)
    assert (floored.loss - floored.recon).item() >= 2 * 0.5  # never under D x free_bits


def test_cyclical_beta_ramps_over_the_first_half_of_every_cycle():
    cfg = LossConfig(beta=1.0, beta_schedule="cyclical", beta_cycle_epochs=4)
    assert [cfg.beta_at(e) for e in range(8)] == [0.5, 1.0, 1.0, 1.0, 0.5, 1.0, 1.0, 1.0]
    assert [LossConfig(beta=0.2, beta_warmup_epochs=4).beta_at(e) for e in range(5)] == pytest.approx(
        [0.05, 0.1, 0.15, 0.2, 0.2]
    )


def test_thinned_views_split_every_window_once():
    counts = torch.randint(0, 200, (64, 8192), dtype=torch.int64).to(torch.uint8)
    generator = torch.Generator().manual_seed(0)
    a, b = split_views(counts, 0.3, generator=generator)
    assert a.dtype == counts.dtype and b.dtype == counts.dtype
    assert torch.equal(a.long() + b.long(), counts.long())  # each window in exactly one view
    assert (a <= counts).all() and (b <= counts).all()
    share = a.double().sum() / counts.double().sum()
    assert share.item() == pytest.approx(0.3, abs=0.002)  # E[A] = fraction x counts (n = 53M windows)


def test_info_nce_by_hand():
    """Two contigs, orthogonal readouts, temperature 1: each view's logits are (1, 0) with its
    partner first, so both cross-entropies are log(1 + e^-1)."""
    a = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # norms drop out: the readout is normalised
    b = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert info_nce(a, b, 1.0).item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)
    # At temperature 0.5 the logits double: log(1 + e^-2).
    assert info_nce(a, b, 0.5).item() == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-6)
    # Swapped partners: the right one is the far one, log(1 + e^1).
    assert info_nce(a, b.flip(0), 1.0).item() == pytest.approx(math.log(1 + math.e), rel=1e-6)
    # Debiased with prior 0.5 (N = 1 negative): (e^0 - 0.5 e^1) / 0.5 < 0 is floored at e^-1, so
    # log(1 + e^-1 / e^1) = log(1 + e^-2); prior 0 is the plain form.
    assert info_nce(a, b, 1.0, prior=0.5).item() == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-6)
    assert info_nce(a, b, 1.0, prior=0.0).item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)
    # Three contigs, prior 0.25, temperature 1, N = 2, own cosine 1 everywhere (pos = e). Anchors 0
    # and 2 have negatives at cosine 0 and -1: (1 + e^-1 - 2 * 0.25 * e) / 0.75 is under the floor
    # 2 e^-1; anchor 1's are at cosine 0 and 0: (2 - 0.5 e) / 0.75 is above it and is kept.
    c = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    floor, kept = 2 * math.exp(-1), (2 - 0.5 * math.e) / 0.75
    rows = [math.log(1 + floor / math.e), math.log(1 + kept / math.e), math.log(1 + floor / math.e)]
    assert info_nce(c, c, 1.0, prior=0.25).item() == pytest.approx(sum(rows) / 3, rel=1e-6)


def test_supervised_contrastive_by_hand():
    """Contigs 0 and 1 share a label and a direction, contig 2 is alone: anchors 0 and 1 each have
    one positive at cosine 1 against a denominator e^1 + e^0; contig 2 has no positive (no anchor)."""
    mu = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 1.0]])
    expected = math.log(1 + math.e) - 1
    assert supervised_contrastive(mu, torch.tensor([0, 0, 1]), 1.0).item() == pytest.approx(expected, rel=1e-6)
    # A contig without a label (-1) is only a negative: the same value.
    assert supervised_contrastive(mu, torch.tensor([0, 0, -1]), 1.0).item() == pytest.approx(expected, rel=1e-6)
    # Positives at cosine 0 (contigs 0 and 2 share a label): anchor 0 pays log(e^1 + e^0) (contig 1
    # is near it), anchor 2 pays log(e^0 + e^0); the mean of the two.
    value = supervised_contrastive(mu, torch.tensor([0, -1, 0]), 1.0).item()
    assert value == pytest.approx((math.log(1 + math.e) + math.log(2)) / 2, rel=1e-6)
    # No anchor with a positive: zero, still differentiable.
    alone = mu.clone().requires_grad_()
    zero = supervised_contrastive(alone, torch.tensor([0, 1, 2]), 1.0)
    zero.backward()
    assert zero.item() == 0.0 and alone.grad is not None


def test_contrastive_terms_are_weighted_and_off_by_default():
    a = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    b = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    mu, codes = torch.cat([a, b]), torch.tensor([0, 1, 0, 1])
    assert contrastive_loss(mu, codes, LossConfig()) is None
    nce = contrastive_loss(mu, codes, LossConfig(infonce=2.0, temperature=1.0))
    assert nce.item() == pytest.approx(2 * math.log(1 + math.exp(-1)), rel=1e-6)
    both = contrastive_loss(mu, codes, LossConfig(infonce=2.0, supcon=0.5, temperature=1.0))
    sup = supervised_contrastive(mu, codes, 1.0).item()
    assert both.item() == pytest.approx(nce.item() + 0.5 * sup, rel=1e-6)
    # supcon without label codes adds nothing (the engine refuses such a run before it starts).
    assert contrastive_loss(mu, None, LossConfig(supcon=1.0)) is None


def test_paired_views_stack_both_halves_and_their_targets():
    g = torch.Generator().manual_seed(0)
    counts = [torch.randint(0, 9, (5, n), generator=g, dtype=torch.int64) for n in (8192, 136, 32)]
    batch = CountBatch(torch.full((5,), 5000), torch.full((5,), 0.4), *counts)
    codes = torch.tensor([0, 1, 2, 0, -1])
    inputs, targets, doubled = training_views(batch, codes, LossConfig(infonce=1.0, cross_view=True))
    assert len(inputs.length) == 10 and torch.equal(doubled, torch.cat([codes, codes]))
    for view_in, view_target, whole in zip(inputs[2:5], targets[2:5], counts, strict=True):
        a, b = view_in[:5], view_in[5:]
        assert torch.equal(a + b, whole)  # the halves of each contig
        assert torch.equal(view_target[:5], b) and torch.equal(view_target[5:], a)  # each reconstructs the other
    # Without cross_view each half reconstructs the whole contig; plain training splits nothing.
    _, targets, _ = training_views(batch, codes, LossConfig(infonce=1.0))
    assert torch.equal(targets.kmer7, torch.cat([batch.kmer7, batch.kmer7]))
    assert training_views(batch, codes, LossConfig())[0] is batch
