"""The VAE loss: weighted per-group reconstruction plus beta * KL, every term returned.

    loss = scale * (w7 * L7 + w4 * MSE4 + w3 * MSE3 + wgc * MSEgc [+ wab * L_ab]) + beta * KL

L7 is, with the gate, gate_bce_weight * BCE(gate, present) + MSE of the values on present
7-mers (a zero-inflated model: the gate says whether a 7-mer occurs, the value says how
often); without it, the MSE of the reconstruction over all 7-mers. "Present" is decided on
the stored counts (count > threshold), never on a log-space cutoff. KL is the closed form
for a diagonal Gaussian posterior against N(0, I) (Kingma & Welling 2014, appendix B),
summed over latent dimensions and averaged over samples, as in pytorch/examples vae; with
`loss.free_bits` the optimiser pays max(KL of a dimension, free_bits) per dimension instead
(`kl_penalty`), while the reported KL stays the true one. Under `loss.cross_view` the target
is the transformed profile of the other view of the same contig (`split_views`). L_ab, for
models with an abundance branch, is VAMB's abundance loss (`abundance_term`).

Two optional contrastive terms are added to the training loss (not to `val/loss`, which stays
the reconstruction + KL every trial shares): `loss.infonce` times `info_nce` between the two
views' readouts, and `loss.supcon` times `supervised_contrastive` on genome labels.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from kmervae.core.config import LossConfig
from kmervae.core.model import N3, N4, N7, VAEOutput


class LossTerms(NamedTuple):
    """The loss and its parts for one batch, each a scalar tensor (None where not applicable)."""

    loss: Tensor
    recon: Tensor  # scale * weighted reconstruction
    kl: Tensor
    l7: Tensor
    mse4: Tensor
    mse3: Tensor
    mse_gc: Tensor
    gate_bce: Tensor | None
    value_mse: Tensor | None
    ce_abundance: Tensor | None = None  # abundance branch: cross-entropy of the depth shares
    mse_abundance: Tensor | None = None  # abundance branch: squared error of the z-scored log depth


def split_output(x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(B, 8361) -> 7-mer (B, 8192), 4-mer (B, 136), 3-mer (B, 32), GC (B, 1) views."""
    return x[:, :N7], x[:, N7 : N7 + N4], x[:, N7 + N4 : N7 + N4 + N3], x[:, N7 + N4 + N3 :]


def kl_per_dim(mu: Tensor, log_var: Tensor) -> Tensor:
    """KL(q(z|x) || N(0, I)) per sample and latent dimension, (B, D)."""
    return -0.5 * (1.0 + log_var - mu.pow(2) - log_var.exp())


def kl_per_sample(mu: Tensor, log_var: Tensor) -> Tensor:
    """KL(q(z|x) || N(0, I)) per sample, (B,)."""
    return kl_per_dim(mu, log_var).sum(dim=1)


def kl_penalty(mu: Tensor, log_var: Tensor, cfg: LossConfig) -> Tensor:
    """The KL term the optimiser pays: the batch-mean KL, or with free bits (Kingma et al. 2016,
    eq. 15) the sum over dimensions of max(batch-mean KL of the dimension, loss.free_bits)."""
    if cfg.free_bits == 0:
        return kl_per_sample(mu, log_var).mean()
    return kl_per_dim(mu, log_var).mean(dim=0).clamp_min(cfg.free_bits).sum()


def split_views(counts: Tensor, fraction: float, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Two views of the same k-mer windows: each window goes to view A with probability
    `fraction` (binomial thinning, on the counts' device), the rest to view B; A + B = counts."""
    wide = counts.float()
    a = torch.binomial(wide, torch.full_like(wide, fraction), generator=generator)
    return a.to(counts.dtype), (wide - a).to(counts.dtype)


READ_LENGTH = 150
"""Bases per read assumed when a depth is turned back into reads to thin it (Illumina 2x150)."""


def split_depths(
    depth: Tensor, length: Tensor, fraction: float, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Two views of a contig's mean depths (B, samples): the reads a depth implies on the contig
    (depth * length / READ_LENGTH, rounded) go to view A with probability `fraction`, the rest to
    B, and each view's reads are turned back into a depth scaled by its share, so both estimate
    the contig's depth with the noise of fewer reads."""
    reads = (depth.float() * length.float().reshape(-1, 1) / READ_LENGTH).round()
    a = torch.binomial(reads, torch.full_like(reads, fraction), generator=generator)
    per_read = READ_LENGTH / length.float().reshape(-1, 1)
    return (a * per_read / fraction).to(depth.dtype), ((reads - a) * per_read / (1 - fraction)).to(depth.dtype)


def info_nce(mu_a: Tensor, mu_b: Tensor, temperature: float, prior: float = 0.0) -> Tensor:
    """Symmetric InfoNCE (van den Oord et al. 2018; SimCLR's NT-Xent across views): contig i's
    view A must pick its own view B among the batch's B views by cosine / temperature, and
    the reverse; the mean of both cross-entropies.

    With `prior` > 0, the debiased form (Chuang et al. 2020, eq. 7): other contigs of the same
    genome are in the batch's negatives (a share `prior` of them in expectation), so the
    negatives' sum is corrected by that share of the positive's weight, floored at its minimum:
    -log(pos / (pos + max((sum(neg) - N prior pos) / (1 - prior), N e^(-1/t))))."""
    a = F.normalize(mu_a.float(), dim=1)
    b = F.normalize(mu_b.float(), dim=1)
    logits = a @ b.T / temperature
    own = torch.arange(len(a), device=a.device)
    if prior == 0:
        return 0.5 * (F.cross_entropy(logits, own) + F.cross_entropy(logits.T, own))
    n = len(a) - 1
    off_diagonal = ~torch.eye(len(a), dtype=torch.bool, device=a.device)

    def debiased(rows: Tensor) -> Tensor:
        pos = rows.diagonal().exp()
        neg = (rows.exp() * off_diagonal).sum(dim=1)
        corrected = ((neg - n * prior * pos) / (1 - prior)).clamp_min(n * math.exp(-1 / temperature))
        return -torch.log(pos / (pos + corrected)).mean()

    return 0.5 * (debiased(logits) + debiased(logits.T))


def supervised_contrastive(mu: Tensor, codes: Tensor, temperature: float) -> Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, L_out): for every anchor with a label
    (code >= 0) and at least one other contig of that label in the batch, minus the mean over
    those positives of log softmax over all other contigs of cosine / temperature; averaged
    over anchors. Zero (with a gradient path) when no anchor has a positive."""
    z = F.normalize(mu.float(), dim=1)
    sim = z @ z.T / temperature
    self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
    log_prob = sim - torch.logsumexp(sim.masked_fill(self_mask, -torch.inf), dim=1, keepdim=True)
    codes = codes.to(z.device)
    positive = (codes[:, None] == codes[None, :]) & (codes[:, None] >= 0) & ~self_mask
    counts = positive.sum(dim=1)
    anchors = counts > 0
    if not bool(anchors.any()):
        return sim.sum() * 0.0
    mean_positive = (log_prob * positive).sum(dim=1)[anchors] / counts[anchors]
    return -mean_positive.mean()


def contrastive_loss(mu: Tensor, codes: Tensor | None, cfg: LossConfig) -> Tensor | None:
    """The weighted contrastive terms of a training batch (None when both are off). With
    `cfg.paired_views`, `mu` holds view A of the batch's contigs, then view B in the same order."""
    total = None
    if cfg.infonce > 0:
        a, b = mu.chunk(2)
        total = cfg.infonce * info_nce(a, b, cfg.temperature, cfg.infonce_prior)
    if cfg.supcon > 0 and codes is not None:
        term = cfg.supcon * supervised_contrastive(mu, codes, cfg.temperature)
        total = term if total is None else total + term
    return total


def presence(kmer7_counts: Tensor, cfg: LossConfig) -> Tensor:
    """(B, 8192) bool: which 7-mers occur (count > presence_threshold)."""
    if kmer7_counts.dtype in (torch.uint16, torch.uint32):  # few kernels for these on CUDA
        kmer7_counts = kmer7_counts.to(torch.int32)
    return kmer7_counts > cfg.presence_threshold


def seven_mer_term(cfg: LossConfig, mse7, gate_bce=None, value_mse=None):
    """L7: with the gate, gate_bce_weight * BCE + value MSE on present 7-mers; else the plain MSE."""
    return mse7 if gate_bce is None else cfg.gate_bce_weight * gate_bce + value_mse


def share_cross_entropy(shares: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy of the predicted depth shares against the contig's, per contig (B,); 1e-9
    keeps a share the softmax rounded to 0 finite (VAMB adds the same)."""
    return -(target * torch.log(shares + 1e-9)).sum(dim=1)


def abundance_term(ce, mse, samples: int):
    """L_ab of VAMB's loss (vamb/encode.py `calc_loss`, without its alpha, which is `loss.wab`
    here): the shares' cross-entropy weighted (n - 1) / (n log n), which is 0 for one sample (the
    shares are constant: only depth counts), plus the log depth's squared error over n."""
    ce_weight = (samples - 1) / (samples * math.log(samples)) if samples > 1 else 0.0
    return ce_weight * ce + mse / samples


def reconstruction(cfg: LossConfig, l7, mse4, mse3, mse_gc, l_ab=None):
    """scale * (w7 * L7 + w4 * MSE4 + w3 * MSE3 + wgc * MSEgc [+ wab * L_ab]): the one formula the
    loss and the epoch metrics both apply (to batch means and to whole-set means, tensors or floats)."""
    kmers = cfg.w7 * l7 + cfg.w4 * mse4 + cfg.w3 * mse3 + cfg.wgc * mse_gc
    return cfg.scale * (kmers if l_ab is None else kmers + cfg.wab * l_ab)


def vae_loss(out: VAEOutput, kmer7_counts: Tensor, cfg: LossConfig, beta: float) -> LossTerms:
    """Loss of one batch, averaged over samples (and features within each group)."""
    recon = out.recon.float()
    r7, r4, r3, rgc = split_output(recon)
    x7, x4, x3, xgc = split_output(out.target)
    mse4 = F.mse_loss(r4, x4)
    mse3 = F.mse_loss(r3, x3)
    mse_gc = F.mse_loss(rgc, xgc)
    gate_bce = value_mse = None
    if out.gate_logits is not None:
        present = presence(kmer7_counts, cfg)
        gate_bce = F.binary_cross_entropy_with_logits(out.gate_logits.float(), present.float())
        sq = (out.values.float() - x7).pow(2)
        value_mse = (sq * present).sum() / present.sum().clamp_min(1)
        l7 = seven_mer_term(cfg, None, gate_bce, value_mse)
    else:
        l7 = seven_mer_term(cfg, F.mse_loss(r7, x7))
    ce_ab = mse_ab = l_ab = None
    if out.shares is not None:
        ce_ab = share_cross_entropy(out.shares.float(), out.target_shares.float()).mean()
        mse_ab = F.mse_loss(out.log_depth.float(), out.target_log_depth.float())
        l_ab = abundance_term(ce_ab, mse_ab, out.shares.shape[1])
    mu, log_var = out.mu.float(), out.log_var.float()
    kl = kl_per_sample(mu, log_var).mean()
    weighted = reconstruction(cfg, l7, mse4, mse3, mse_gc, l_ab)
    loss = weighted + beta * kl_penalty(mu, log_var, cfg)
    return LossTerms(loss, weighted, kl, l7, mse4, mse3, mse_gc, gate_bce, value_mse, ce_ab, mse_ab)
