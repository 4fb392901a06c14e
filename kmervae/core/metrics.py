"""Epoch metrics, computed exactly: sums and counts are accumulated, then divided once.

One accumulator serves training, validation, evaluation and tests, and produces the keys
of docs/contracts.md ("Metric keys"). Its state is one float64 vector, so under DDP a single
all-reduce of `state` makes every rank's numbers those of the whole validation set.
The epoch loss applies the loss formula to the epoch-level terms, so it is the loss of
the whole set, not an average of batch averages.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from kmervae.base.metric_keys import VALIDATION
from kmervae.core.config import LossConfig
from kmervae.core.loss import (
    abundance_term,
    kl_per_sample,
    presence,
    reconstruction,
    seven_mer_term,
    share_cross_entropy,
    split_output,
)
from kmervae.core.model import N3, N4, N7, VAEOutput, readout

ACTIVE_UNIT_THRESHOLD = 0.01
"""A latent unit is active when Cov_x(E[z|x]) exceeds this (Burda et al. 2016)."""

# Scalar sums kept in the state vector, in order.
_FIELDS = (
    "n",  # samples
    "sse7",  # squared error of the 7-mer reconstruction, all bins
    "present7",  # present 7-mer bins
    "sse7_present",
    "sse7_absent",
    "gate_bce",  # summed BCE over all 7-mer bins
    "gate_correct",  # bins where (gate > 0) == present
    "value_sse",  # squared error of the value head on present bins
    "sse4",
    "sse3",
    "sse_gc",
    "kl",  # summed per-sample KL
    "ce_ab",  # abundance branch: summed cross-entropy of the depth shares
    "sse_ab",  # abundance branch: summed squared error of the z-scored log depth
)


class EpochMetrics:
    """Accumulates one epoch of model outputs; `compute` turns the sums into metric values."""

    def __init__(self, latent_dim: int, gated: bool, device: torch.device | str = "cpu", samples: int = 0):
        self.latent_dim = latent_dim
        self.gated = gated
        self.samples_ab = samples  # samples of the abundance branch (0: none)
        # [scalars..., sum of mu (latent), sum of mu^2 (latent)]
        self.state = torch.zeros(len(_FIELDS) + 2 * latent_dim, dtype=torch.float64, device=device)

    def _slot(self, name: str) -> int:
        return _FIELDS.index(name)

    @torch.no_grad()
    def update(self, out: VAEOutput, kmer7_counts: Tensor, cfg: LossConfig) -> None:
        """Add a batch (the model's output and the 7-mer counts it saw)."""
        r7, r4, r3, rgc = (t.double() for t in split_output(out.recon.float()))
        x7, x4, x3, xgc = (t.double() for t in split_output(out.target))
        sq7 = (r7 - x7).pow(2)
        present = presence(kmer7_counts, cfg)
        sums = {
            "n": float(len(r7)),
            "sse7": sq7.sum(),
            "present7": present.sum().double(),
            "sse7_present": (sq7 * present).sum(),
            "sse7_absent": (sq7 * ~present).sum(),
            "sse4": (r4 - x4).pow(2).sum(),
            "sse3": (r3 - x3).pow(2).sum(),
            "sse_gc": (rgc - xgc).pow(2).sum(),
            "kl": kl_per_sample(out.mu.double(), out.log_var.double()).sum(),
        }
        if out.gate_logits is not None:
            logits = out.gate_logits.double()
            target = present.double()
            sums["gate_bce"] = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="sum")
            sums["gate_correct"] = ((logits > 0) == present).sum().double()
            sums["value_sse"] = ((out.values.double() - x7).pow(2) * present).sum()
        if out.shares is not None:
            sums["ce_ab"] = share_cross_entropy(out.shares.double(), out.target_shares.double()).sum()
            sums["sse_ab"] = (out.log_depth.double() - out.target_log_depth.double()).pow(2).sum()
        for name, value in sums.items():
            self.state[self._slot(name)] += value
        mu = out.mu.double()
        k = len(_FIELDS)
        self.state[k : k + self.latent_dim] += mu.sum(dim=0)
        self.state[k + self.latent_dim :] += mu.pow(2).sum(dim=0)

    @property
    def samples(self) -> int:
        return int(self.state[0].item())

    def compute(self, cfg: LossConfig, beta: float, prefix: str = VALIDATION) -> dict[str, float]:
        """Metric values of the epoch, keyed as in docs/contracts.md (gate keys only for gated models,
        abundance keys only for models with an abundance branch)."""
        s = {name: self.state[i].item() for i, name in enumerate(_FIELDS)}
        n = s["n"]
        if n == 0:
            return {}
        bins7 = n * N7
        absent7 = bins7 - s["present7"]
        mse4, mse3, mse_gc = s["sse4"] / (n * N4), s["sse3"] / (n * N3), s["sse_gc"] / n
        m = {
            "mse_7": s["sse7"] / bins7,
            "mse_7_present": s["sse7_present"] / s["present7"] if s["present7"] else math.nan,
            "mse_7_absent": s["sse7_absent"] / absent7 if absent7 else math.nan,
            "frac_present": s["present7"] / bins7,
            "mse_4": mse4,
            "mse_3": mse3,
            "mse_gc": mse_gc,
            "kl": s["kl"] / n,
        }
        if self.gated:
            m["gate_bce"] = s["gate_bce"] / bins7
            m["gate_acc"] = s["gate_correct"] / bins7
            m["value_mse"] = s["value_sse"] / s["present7"] if s["present7"] else 0.0
        l_ab = None
        if self.samples_ab:
            m["ce_abundance"], m["mse_abundance"] = s["ce_ab"] / n, s["sse_ab"] / n
            l_ab = abundance_term(m["ce_abundance"], m["mse_abundance"], self.samples_ab)
        l7 = seven_mer_term(cfg, m["mse_7"], m.get("gate_bce"), m.get("value_mse"))
        m["recon"] = reconstruction(cfg, l7, mse4, mse3, mse_gc, l_ab)
        m["loss"] = m["recon"] + beta * m["kl"]
        m["active_units"] = float(self.active_units())
        return {f"{prefix}{key}": value for key, value in m.items()}

    def active_units(self) -> int:
        """Latent dimensions whose posterior mean varies across samples (variance > 0.01)."""
        n = self.state[0]
        k = len(_FIELDS)
        mean = self.state[k : k + self.latent_dim] / n
        var = self.state[k + self.latent_dim :] / n - mean.pow(2)
        return int((var > ACTIVE_UNIT_THRESHOLD).sum().item())


VIEW_CONTIGS = 1_000
"""Validation contigs (per rank) whose two thinned views score `val/view_agreement`."""
VIEW_SEED = 20_260_127
"""Seed of the thinning: every epoch and every trial scores the same two views of the same contigs."""


@torch.no_grad()
def view_agreement(mu_a: Tensor, mu_b: Tensor) -> float:
    """Label-free embedding quality: each contig's counts are split binomially into two halves
    (`engine.split_batch`) and both are embedded; for every half, the share of the other contigs'
    opposite halves that lie farther from it (cosine of the readout) than its own partner does,
    averaged over both directions. 1 = every contig's halves find each other first; 0.5 = chance.
    What two independent halves of a contig share is its genome's signal, not sampling noise,
    so an embedding scores high by keeping what separates sources and dropping the noise."""
    n = len(mu_a)
    if n < 2:
        return math.nan
    a, b = readout(mu_a.double()), readout(mu_b.double())
    farther = 0.0
    for lo in range(0, n, 1024):
        sim = a[lo : lo + 1024] @ b.T  # (chunk, n): half A of each contig against every half B
        rows = torch.arange(sim.shape[0])
        own = sim[rows, rows + lo]
        farther += float((sim < own[:, None]).sum())  # other B halves farther than the partner
        sim_t = b[lo : lo + 1024] @ a.T  # and from the B side
        own_t = sim_t[rows, rows + lo]
        farther += float((sim_t < own_t[:, None]).sum())
    return farther / (2 * n * (n - 1))


LINK_PAIRS = 2_000
"""Must-link pairs (a fixed, seeded subsample) that score `val/link_agreement`: O(pairs x n)."""


def must_link_pairs(links: np.ndarray) -> np.ndarray:
    """(pairs, 2) row indices of consecutive fragments of one record among the rows of `links`
    (`data.link_keys`: record hash, start; a record hash of -1 links nothing)."""
    order = np.lexsort((links[:, 1], links[:, 0]))
    same = (links[order[1:], 0] == links[order[:-1], 0]) & (links[order[1:], 0] >= 0)
    return np.stack([order[:-1], order[1:]], axis=1)[same]


@torch.no_grad()
def link_agreement(embeddings: Tensor, links: Tensor, max_pairs: int = LINK_PAIRS) -> float:
    """Label-free embedding quality from must-links, as SemiBin2 draws them: two consecutive
    fragments of one record (`data.link_keys`: same record hash, next start among the contigs
    given) share a genome but no bases. For each such pair and each of its two members, the
    share of the other contigs that lie farther from it (cosine of the readout) than its partner,
    ties counted half; the mean over pairs and both directions. 1 = every fragment's neighbour in
    its record comes first; 0.5 = chance (a collapsed embedding scores 0.5). Unlike
    `view_agreement`, the two members have no windows in common, so an embedding scores high by
    keeping what a genome's regions share, not what makes one contig unique. NaN without pairs."""
    pairs = torch.from_numpy(must_link_pairs(links.numpy()))
    n = len(embeddings)
    if len(pairs) == 0 or n < 3:
        return math.nan
    if len(pairs) > max_pairs:
        pairs = pairs[torch.randperm(len(pairs), generator=torch.Generator().manual_seed(0))[:max_pairs]]
    x = readout(embeddings.double())
    anchors, partners = torch.cat([pairs[:, 0], pairs[:, 1]]), torch.cat([pairs[:, 1], pairs[:, 0]])
    score = 0.0
    for lo in range(0, len(anchors), 1024):
        a, p = anchors[lo : lo + 1024], partners[lo : lo + 1024]
        sim = x[a] @ x.T  # (chunk, n)
        rows = torch.arange(len(a))
        own = sim[rows, p][:, None]
        sim[rows, a] = math.nan  # the anchor itself and its partner are not "others"
        sim[rows, p] = math.nan
        farther = (sim < own).sum(dim=1) + 0.5 * (sim == own).sum(dim=1)
        score += float((farther / (n - 2)).sum())
    return score / len(anchors)


KNN_K = 5
KNN_MAX_SAMPLES = 5_000
"""kNN accuracy uses at most this many validation contigs (a fixed, seeded subsample): O(n^2)."""


@torch.no_grad()
def knn_accuracy(embeddings: Tensor, labels, k: int = KNN_K, max_samples: int = KNN_MAX_SAMPLES) -> float:
    """Leave-one-out k-nearest-neighbour accuracy (cosine similarity, majority vote, ties to the nearest)."""
    labels = list(labels)
    keep = [i for i, label in enumerate(labels) if label is not None]
    if len(keep) > max_samples:
        generator = torch.Generator().manual_seed(0)
        keep = [keep[i] for i in sorted(torch.randperm(len(keep), generator=generator)[:max_samples].tolist())]
    if len(keep) <= k:
        return math.nan
    names = sorted({labels[i] for i in keep})
    codes = torch.tensor([names.index(labels[i]) for i in keep])
    x = readout(embeddings[keep].double())
    correct = 0
    for lo in range(0, len(keep), 1024):
        sim = x[lo : lo + 1024] @ x.T  # (b, n)
        sim[torch.arange(sim.shape[0]), torch.arange(lo, lo + sim.shape[0])] = -math.inf  # leave one out
        nearest = sim.topk(k, dim=1).indices  # (b, k), nearest first
        votes = torch.nn.functional.one_hot(codes[nearest], len(names)).double()
        votes += torch.linspace(1e-3, 0, k, dtype=torch.float64)[None, :, None] * votes  # ties -> nearer wins
        predicted = votes.sum(dim=1).argmax(dim=1)
        correct += int((predicted == codes[lo : lo + 1024]).sum())
    return correct / len(keep)


def kmeans_ari(embeddings: Tensor, labels, max_samples: int = KNN_MAX_SAMPLES, seed: int = 0) -> float:
    """Adjusted Rand index between k-means clusters of the readout (k = the number of labels)
    and the labels; NaN where scikit-learn is absent (bare GPU hosts) or labels are too few."""
    try:
        from sklearn.cluster import KMeans
        from sklearn.metrics import adjusted_rand_score
    except ImportError:
        return math.nan
    labels = list(labels)
    keep = [i for i, label in enumerate(labels) if label is not None]
    if len(keep) > max_samples:
        generator = torch.Generator().manual_seed(seed)
        keep = [keep[i] for i in sorted(torch.randperm(len(keep), generator=generator)[:max_samples].tolist())]
    names = sorted({labels[i] for i in keep})
    if len(names) < 2 or len(keep) <= len(names):
        return math.nan
    x = readout(embeddings[keep].double()).numpy()
    clusters = KMeans(n_clusters=len(names), n_init=3, random_state=seed).fit_predict(x)
    return float(adjusted_rand_score([labels[i] for i in keep], clusters))
