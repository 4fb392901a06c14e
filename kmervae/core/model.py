"""The branched VAE on canonical k-mer profiles, and the feature transform that feeds it.

The transform is part of the model (saved in every checkpoint, exported with the
encoder), so training and serving read the same stored counts the same way. The model
follows docs/contracts.md "The model": three encoder branches (7-, 4-, 3-mers, each given GC
and length), a shared trunk to z_mean / z_log_var, and a decoder that mirrors it with
one projection per branch and per-branch heads. The structure follows pytorch/examples
`vae/main.py`: `encode`, `reparameterize`, `decode`, `forward` on a pure nn.Module; the
loss lives in `kmervae.core.loss`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from kmervae.core.config import ModelConfig
from kmervae.core.feature_contract import N_BINS

N7, N4, N3 = N_BINS[7], N_BINS[4], N_BINS[3]  # 8192, 136, 32
N_OUTPUT = N7 + N4 + N3 + 1  # 8,361 = [7-mers, 4-mers, 3-mers, GC]


class Features(NamedTuple):
    """Transformed inputs: log-frequencies per k, GC and log10(length), each (B, n) float32."""

    kmer7: Tensor  # (B, 8192)
    kmer4: Tensor  # (B, 136)
    kmer3: Tensor  # (B, 32)
    gc: Tensor  # (B, 1)
    log_length: Tensor  # (B, 1)

    def target(self) -> Tensor:
        """What the decoder reconstructs: [7-mers, 4-mers, 3-mers, GC], (B, 8361)."""
        return torch.cat([self.kmer7, self.kmer4, self.kmer3, self.gc], dim=1)


class FeatureTransform(nn.Module):
    """Counts -> log(count / windows + eps) per k; length -> log10(length); GC as is.

    Inputs are the parquet columns as tensors of any integer (or float) dtype, so they
    can travel to the device as compact integers and be widened there.
    """

    def __init__(self, log_eps: float = 1e-6):
        super().__init__()
        self.log_eps = log_eps
        # Empty buffer whose dtype follows .double()/.half() of the model: the transform
        # computes in the model's precision (float64 references included).
        self.register_buffer("dtype_probe", torch.empty(0), persistent=False)

    def log_frequency(self, counts: Tensor) -> Tensor:
        counts = counts.to(self.dtype_probe.dtype)
        windows = counts.sum(dim=1, keepdim=True).clamp_min(1.0)  # featurizer guarantees > 0 for k=7
        return torch.log(counts / windows + self.log_eps)

    def forward(self, length: Tensor, gc: Tensor, kmer7: Tensor, kmer4: Tensor, kmer3: Tensor) -> Features:
        return Features(
            kmer7=self.log_frequency(kmer7),
            kmer4=self.log_frequency(kmer4),
            kmer3=self.log_frequency(kmer3),
            gc=gc.to(self.dtype_probe.dtype).reshape(-1, 1),
            log_length=torch.log10(length.to(self.dtype_probe.dtype).clamp_min(1.0)).reshape(-1, 1),
        )

    def extra_repr(self) -> str:
        return f"log_eps={self.log_eps}"


class VAEOutput(NamedTuple):
    """What `BranchedVAE.forward` returns."""

    recon: Tensor  # (B, 8361) [7-mers, 4-mers, 3-mers, GC]
    mu: Tensor  # (B, latent)
    log_var: Tensor  # (B, latent)
    gate_logits: Tensor | None  # (B, 8192), None when the gate is off
    values: Tensor  # (B, 8192) 7-mer value head (before gating)
    gc_branches: Tensor  # (B, 3) GC predicted by the 7-, 4- and 3-mer branches
    target: Tensor  # (B, 8361) the transformed input the recon is compared with


def dense_block(n_in: int, n_out: int, cfg: ModelConfig) -> nn.Sequential:
    """Linear -> BatchNorm -> LeakyReLU, as every hidden layer of the seed."""
    return nn.Sequential(
        nn.Linear(n_in, n_out),
        nn.BatchNorm1d(n_out, eps=cfg.batchnorm_eps, momentum=cfg.batchnorm_momentum),
        nn.LeakyReLU(cfg.leaky_slope),
    )


def mlp(n_in: int, widths: tuple[int, ...], cfg: ModelConfig) -> nn.Sequential:
    """A stack of dense blocks through `widths`."""
    layers, width = [], n_in
    for w in widths:
        layers.append(dense_block(width, w, cfg))
        width = w
    return nn.Sequential(*layers)


class BranchedVAE(nn.Module):
    """Branched VAE: encoder branches per k, shared trunk, mirrored decoder with per-branch heads."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.transform = FeatureTransform(cfg.log_eps)
        self.input_dropout = nn.Dropout(cfg.input_dropout)
        w7, w4, w3, trunk = cfg.kmer7_widths, cfg.kmer4_widths, cfg.kmer3_widths, cfg.trunk_widths
        # Encoder: each branch sees its k-mers plus GC and log10(length).
        self.enc7 = mlp(N7 + 2, w7, cfg)  # (B, 8194) -> (B, w7[-1])
        self.enc4 = mlp(N4 + 2, w4, cfg)  # (B, 138) -> (B, w4[-1])
        self.enc3 = mlp(N3 + 2, w3, cfg)  # (B, 34) -> (B, w3[-1])
        concat = w7[-1] + w4[-1] + w3[-1]  # 352 for `final`
        self.enc_trunk = mlp(concat, trunk, cfg)
        self.z_mean = nn.Linear(trunk[-1], cfg.latent_dim)
        self.z_log_var = nn.Linear(trunk[-1], cfg.latent_dim)
        # Decoder: z -> reversed trunk -> concat width, then one projection into each branch.
        self.dec_trunk = mlp(cfg.latent_dim, tuple(reversed(trunk)) + (concat,), cfg)
        self.proj7 = dense_block(concat, w7[-1], cfg)
        self.proj4 = dense_block(concat, w4[-1], cfg)
        self.proj3 = dense_block(concat, w3[-1], cfg)
        self.dec7 = mlp(w7[-1], tuple(reversed(w7[:-1])), cfg)
        self.dec4 = mlp(w4[-1], tuple(reversed(w4[:-1])), cfg)
        self.dec3 = mlp(w3[-1], tuple(reversed(w3[:-1])), cfg)
        # Heads on the widest decoder layer of each branch (= first encoder width).
        self.head7_values = nn.Linear(w7[0], N7)
        self.head7_gate = nn.Linear(w7[0], N7) if cfg.gate_k7 else None
        self.head7_gc = nn.Linear(w7[0], 1)
        self.head4 = nn.Linear(w4[0], N4 + 1)  # 4-mers + GC
        self.head3 = nn.Linear(w3[0], N3 + 1)  # 3-mers + GC
        if cfg.input_norm == "zscore":  # fitted on training contigs (fit_input_norm), saved with the weights
            for name, n in (("7", N7), ("4", N4), ("3", N3)):
                self.register_buffer(f"norm_mean{name}", torch.zeros(n))
                self.register_buffer(f"norm_std{name}", torch.ones(n))
            self.register_buffer("norm_fitted", torch.zeros((), dtype=torch.bool))

    def normalize(self, x: Features) -> tuple[Tensor, Tensor, Tensor]:
        """The k-mer blocks as the encoder sees them (model.input_norm)."""
        blocks = (x.kmer7, x.kmer4, x.kmer3)
        if self.cfg.input_norm == "clr":  # log-ratios to the contig's own mean: the total drops out
            return tuple(b - b.mean(dim=1, keepdim=True) for b in blocks)
        if self.cfg.input_norm == "zscore":
            stats = (
                (self.norm_mean7, self.norm_std7),
                (self.norm_mean4, self.norm_std4),
                (self.norm_mean3, self.norm_std3),
            )
            return tuple((b - mean) / std for b, (mean, std) in zip(blocks, stats, strict=True))
        return blocks

    @torch.no_grad()
    def set_input_norm(self, sums: Tensor, squares: Tensor, n: float) -> None:
        """Fit the z-score statistics from per-feature sums and sums of squares over n contigs
        ([7-mers, 4-mers, 3-mers] concatenated, float64). A constant feature keeps std 1."""
        mean = sums / n
        std = (squares / n - mean.pow(2)).clamp_min(0).sqrt()
        std = torch.where(std > 1e-3, std, torch.ones_like(std))
        for name, lo, hi in (("7", 0, N7), ("4", N7, N7 + N4), ("3", N7 + N4, N7 + N4 + N3)):
            getattr(self, f"norm_mean{name}").copy_(mean[lo:hi])
            getattr(self, f"norm_std{name}").copy_(std[lo:hi])
        self.norm_fitted.fill_(True)

    def encode(self, x: Features) -> tuple[Tensor, Tensor]:
        """Transformed features -> (mu, log_var), each (B, latent)."""
        side = torch.cat([x.gc, x.log_length], dim=1)  # (B, 2)
        k7, k4, k3 = self.normalize(x)
        h7 = self.enc7(torch.cat([self.input_dropout(k7), side], dim=1))
        h4 = self.enc4(torch.cat([self.input_dropout(k4), side], dim=1))
        h3 = self.enc3(torch.cat([self.input_dropout(k3), side], dim=1))
        h = self.enc_trunk(torch.cat([h7, h4, h3], dim=1))
        return self.z_mean(h), self.z_log_var(h)

    def reparameterize(self, mu: Tensor, log_var: Tensor) -> Tensor:
        """z = mu + sigma * eps while training; the mean in eval mode (deterministic embeddings)."""
        if not self.training:
            return mu
        return mu + torch.exp(0.5 * log_var) * torch.randn_like(mu)

    def decode(self, z: Tensor) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
        """z -> (recon (B, 8361), gate logits or None, 7-mer values (B, 8192), branch GC (B, 3))."""
        h = self.dec_trunk(z)
        d7 = self.dec7(self.proj7(h))
        d4 = self.dec4(self.proj4(h))
        d3 = self.dec3(self.proj3(h))
        values = self.head7_values(d7)
        gate = self.head7_gate(d7) if self.head7_gate is not None else None
        if gate is not None:
            p = torch.sigmoid(gate)
            recon7 = p * values + (1.0 - p) * self.cfg.floor
        else:
            recon7 = values
        out4, out3 = self.head4(d4), self.head3(d3)
        gc_branches = torch.cat([self.head7_gc(d7), out4[:, N4:], out3[:, N3:]], dim=1)  # (B, 3)
        gc = gc_branches.mean(dim=1, keepdim=True)
        recon = torch.cat([recon7, out4[:, :N4], out3[:, :N3], gc], dim=1)
        return recon, gate, values, gc_branches

    def forward(
        self, length: Tensor, gc: Tensor, kmer7: Tensor, kmer4: Tensor, kmer3: Tensor, target: tuple | None = None
    ) -> VAEOutput:
        """Encode the counts and reconstruct them, or with `target` (the five columns of another
        view of the same contigs, cross-view training) reconstruct that view instead."""
        x = self.transform(length, gc, kmer7, kmer4, kmer3)
        mu, log_var = self.encode(x)
        z = self.reparameterize(mu, log_var)
        recon, gate, values, gc_branches = self.decode(z)
        wanted = x if target is None else self.transform(*target)
        return VAEOutput(recon, mu, log_var, gate, values, gc_branches, wanted.target())


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters of a model."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
