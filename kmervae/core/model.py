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

from kmervae.base.feature_contract import N_BINS
from kmervae.core.config import ModelConfig

N7, N4, N3 = N_BINS[7], N_BINS[4], N_BINS[3]  # 8192, 136, 32
N_OUTPUT = N7 + N4 + N3 + 1  # 8,361 = [7-mers, 4-mers, 3-mers, GC]


TNF_EPS = 1e-6
"""Pseudo-frequency of the tetranucleotide frequencies in the readout (`model.tnf_readout`): the
untrained baseline's (`kmervae.apply.evaluate.baselines`), whatever the model's own `log_eps`."""


def readout(mu: Tensor) -> Tensor:
    """Rows at unit length (L2-normalised), in the dtype given: the geometry every embedding is
    scored and binned in (cosine). The norm of a latent mean carries the posterior's confidence,
    not the genome: dropping it makes Euclidean k-means agree with cosine neighbours. Idempotent."""
    return torch.nn.functional.normalize(mu, dim=1)


class Features(NamedTuple):
    """Transformed inputs: log-frequencies per k, GC and log10(length), each (B, n) float32, and
    the mean depth per sample as stored (the model's abundance branch normalises it)."""

    kmer7: Tensor  # (B, 8192)
    kmer4: Tensor  # (B, 136)
    kmer3: Tensor  # (B, 32)
    gc: Tensor  # (B, 1)
    log_length: Tensor  # (B, 1)
    depth: Tensor | None = None  # (B, samples), where the features have abundance
    tnf: Tensor | None = None  # (B, 136) 4-mer log-frequencies at TNF_EPS, for model.tnf_readout

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

    def log_frequency(self, counts: Tensor, eps: float | None = None) -> Tensor:
        counts = counts.to(self.dtype_probe.dtype)
        windows = counts.sum(dim=1, keepdim=True).clamp_min(1.0)  # featurizer guarantees > 0 for k=7
        return torch.log(counts / windows + (self.log_eps if eps is None else eps))

    def forward(
        self, length: Tensor, gc: Tensor, kmer7: Tensor, kmer4: Tensor, kmer3: Tensor, abundance: Tensor | None = None
    ) -> Features:
        return Features(
            kmer7=self.log_frequency(kmer7),
            kmer4=self.log_frequency(kmer4),
            kmer3=self.log_frequency(kmer3),
            gc=gc.to(self.dtype_probe.dtype).reshape(-1, 1),
            log_length=torch.log10(length.to(self.dtype_probe.dtype).clamp_min(1.0)).reshape(-1, 1),
            depth=None if abundance is None else abundance.to(self.dtype_probe.dtype),
            tnf=self.log_frequency(kmer4, TNF_EPS),
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
    shares: Tensor | None = None  # (B, samples) predicted share of depth per sample (abundance branch)
    log_depth: Tensor | None = None  # (B, 1) predicted z-scored log total depth
    target_shares: Tensor | None = None  # (B, samples) the shares it is compared with
    target_log_depth: Tensor | None = None  # (B, 1)
    embedding: Tensor | None = None  # (B, embedding_dim) the readout (`BranchedVAE.embed`)


MIN_DEPTH = 1e-3
"""Total depths are floored here before the log (VAMB's clip): a contig no read reached stays finite."""
LOG_RATIO_FLOOR = 1e-2
"""Scaled depths are floored here before the log of model.abundance_input=log_ratio."""


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
        # Encoder: each branch sees its k-mers plus GC and (model.length_input) log10(length).
        side = 2 if cfg.length_input else 1
        self.enc7 = mlp(N7 + side, w7, cfg)  # (B, 8194) -> (B, w7[-1])
        self.enc4 = mlp(N4 + side, w4, cfg)  # (B, 138) -> (B, w4[-1])
        self.enc3 = mlp(N3 + side, w3, cfg)  # (B, 34) -> (B, w3[-1])
        wab = cfg.abundance_widths
        if wab and cfg.abundance_samples < 1:
            raise ValueError("model.abundance_widths needs model.abundance_samples >= 1 (RunConfig.for_data sets it)")
        # Abundance: the share of depth per sample plus the z-scored log total depth (VAMB's input).
        self.enc_ab = mlp(cfg.abundance_samples + 1, wab, cfg) if wab else None
        concat = w7[-1] + w4[-1] + w3[-1] + (wab[-1] if wab else 0)  # 352 for `final`
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
        if wab:
            self.proj_ab = dense_block(concat, wab[-1], cfg)
            self.dec_ab = mlp(wab[-1], tuple(reversed(wab[:-1])), cfg)
            self.head_ab = nn.Linear(wab[0], cfg.abundance_samples + 1)  # share logits + log depth
            # Fitted on the training contigs (fit_input_statistics), saved with the weights: each
            # sample's mean depth (samples sequenced deeper count alike) and the log depth's mean and std.
            self.register_buffer("depth_scale", torch.ones(cfg.abundance_samples))
            self.register_buffer("log_depth_stats", torch.tensor([0.0, 1.0]))
            self.register_buffer("depth_fitted", torch.zeros((), dtype=torch.bool))
        if cfg.input_norm == "zscore":  # fitted on training contigs (fit_input_statistics), saved with the weights
            for name, n in (("7", N7), ("4", N4), ("3", N3)):
                self.register_buffer(f"norm_mean{name}", torch.zeros(n))
                self.register_buffer(f"norm_std{name}", torch.ones(n))
            self.register_buffer("norm_fitted", torch.zeros((), dtype=torch.bool))
        if cfg.tnf_readout:  # fitted on training contigs (fit_input_statistics), saved with the weights
            self.register_buffer("tnf_mean", torch.zeros(N4))
            self.register_buffer("tnf_std", torch.ones(N4))
            self.register_buffer("tnf_fitted", torch.zeros((), dtype=torch.bool))

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
        ([7-mers, 4-mers, 3-mers] concatenated, float64)."""
        mean, std = mean_and_std(sums, squares, n)
        for name, lo, hi in (("7", 0, N7), ("4", N7, N7 + N4), ("3", N7 + N4, N7 + N4 + N3)):
            getattr(self, f"norm_mean{name}").copy_(mean[lo:hi])
            getattr(self, f"norm_std{name}").copy_(std[lo:hi])
        self.norm_fitted.fill_(True)

    @torch.no_grad()
    def set_tnf_stats(self, sums: Tensor, squares: Tensor, n: float) -> None:
        """Fit the readout's TNF z-scores (`Features.tnf`) from their sums and sums of squares over
        n contigs (float64)."""
        mean, std = mean_and_std(sums, squares, n)
        self.tnf_mean.copy_(mean)
        self.tnf_std.copy_(std)
        self.tnf_fitted.fill_(True)

    def embed(self, x: Features, mu: Tensor) -> Tensor:
        """A contig's embedding (the readout): what validation scores, exported encoders return and
        `kmervae embed` writes. The latent mean at unit length; with model.tnf_readout = w > 0, the
        z-scored TNF at unit length times w beside it, the whole at unit length."""
        z = readout(mu)
        if not self.cfg.tnf_readout:
            return z
        tnf = readout((x.tnf.to(mu.dtype) - self.tnf_mean) / self.tnf_std) * self.cfg.tnf_readout
        return readout(torch.cat([z, tnf], dim=1))

    def abundance_view(self, depth: Tensor | None) -> tuple[Tensor, Tensor]:
        """Mean depths (B, samples) -> (share of the contig's depth in each sample (B, samples),
        z-scored log total depth (B, 1)), VAMB's normalisation (vamb/encode.py make_dataloader):
        each sample scaled by its mean depth over the training contigs, then the shares of the
        scaled depths (a contig no read reached gets equal shares) and the log of their sum."""
        if depth is None:
            raise ValueError("this model has an abundance branch: its input needs the features' 'abundance' column")
        scaled = depth / self.depth_scale
        total = scaled.sum(dim=1, keepdim=True)
        shares = torch.where(total > 0, scaled / total.clamp_min(1e-12), torch.full_like(scaled, 1 / scaled.shape[1]))
        mean, std = self.log_depth_stats[0], self.log_depth_stats[1]
        return shares, (torch.log(total.clamp_min(MIN_DEPTH)) - mean) / std

    def log_ratios(self, depth: Tensor) -> Tensor:
        """(B, samples) mean depths -> the centred log of the scaled depths (model.abundance_input
        'log_ratio'). The floor (a hundredth of a sample's mean depth) keeps a sample no read of
        the contig reached finite, and its ratios to the other samples bounded."""
        logs = torch.log((depth / self.depth_scale).clamp_min(LOG_RATIO_FLOOR))
        return logs - logs.mean(dim=1, keepdim=True)

    def log_scaled_depth(self, depth: Tensor) -> Tensor:
        """(B, samples) mean depths -> (B, 1) log of the summed scaled depths, before z-scoring."""
        return torch.log((depth / self.depth_scale).sum(dim=1, keepdim=True).clamp_min(MIN_DEPTH))

    @torch.no_grad()
    def set_depth_scale(self, depth_sums: Tensor, n: float) -> None:
        """Each sample's mean depth over n training contigs, from their summed depths (float64)."""
        self.depth_scale.copy_(torch.where(depth_sums > 0, depth_sums / n, torch.ones_like(depth_sums)))

    @torch.no_grad()
    def set_log_depth_stats(self, log_sums: Tensor, n: float) -> None:
        """Mean and standard deviation of `log_scaled_depth` over n training contigs, from its sum
        and sum of squares (float64); the abundance normalisation is then complete."""
        mean = log_sums[0] / n
        std = (log_sums[1] / n - mean.pow(2)).clamp_min(0).sqrt()
        self.log_depth_stats.copy_(torch.stack([mean, std if std > 1e-3 else torch.ones_like(std)]))
        self.depth_fitted.fill_(True)

    def encode(self, x: Features) -> tuple[Tensor, Tensor]:
        """Transformed features -> (mu, log_var), each (B, latent)."""
        side = torch.cat([x.gc, x.log_length], dim=1) if self.cfg.length_input else x.gc  # (B, 2) or (B, 1)
        k7, k4, k3 = self.normalize(x)
        h7 = self.enc7(torch.cat([self.input_dropout(k7), side], dim=1))
        h4 = self.enc4(torch.cat([self.input_dropout(k4), side], dim=1))
        h3 = self.enc3(torch.cat([self.input_dropout(k3), side], dim=1))
        branches = [h7, h4, h3]
        if self.enc_ab is not None:
            shares, log_depth = self.abundance_view(x.depth)
            if self.cfg.abundance_input == "log_ratio":
                shares = self.log_ratios(x.depth)
            branches.append(self.enc_ab(torch.cat([shares, log_depth], dim=1)))
        h = self.enc_trunk(torch.cat(branches, dim=1))
        return self.z_mean(h), self.z_log_var(h)

    def reparameterize(self, mu: Tensor, log_var: Tensor) -> Tensor:
        """z = mu + sigma * eps while training; the mean in eval mode (deterministic embeddings)."""
        if not self.training:
            return mu
        return mu + torch.exp(0.5 * log_var) * torch.randn_like(mu)

    def decode_abundance(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """Decoder trunk output -> (predicted shares (B, samples), predicted z-scored log depth
        (B, 1)); the softmax makes the shares a distribution, as VAMB's decoder does."""
        out = self.head_ab(self.dec_ab(self.proj_ab(h)))
        return torch.softmax(out[:, :-1].float(), dim=1), out[:, -1:]

    def decode(self, h: Tensor) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
        """Decoder trunk output (`dec_trunk(z)`) -> (recon (B, 8361), gate logits or None, 7-mer
        values (B, 8192), branch GC (B, 3))."""
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
        self,
        length: Tensor,
        gc: Tensor,
        kmer7: Tensor,
        kmer4: Tensor,
        kmer3: Tensor,
        abundance: Tensor | None = None,
        target: tuple | None = None,
    ) -> VAEOutput:
        """Encode the counts (and depths) and reconstruct them, or with `target` (the columns of
        another view of the same contigs, cross-view training) reconstruct that view instead."""
        x = self.transform(length, gc, kmer7, kmer4, kmer3, abundance)
        mu, log_var = self.encode(x)
        z = self.reparameterize(mu, log_var)
        h = self.dec_trunk(z)
        recon, gate, values, gc_branches = self.decode(h)
        wanted = x if target is None else self.transform(*target)
        out = VAEOutput(recon, mu, log_var, gate, values, gc_branches, wanted.target(), embedding=self.embed(x, mu))
        if self.enc_ab is None:
            return out
        shares, log_depth = self.decode_abundance(h)
        target_shares, target_log_depth = self.abundance_view(wanted.depth)
        return out._replace(
            shares=shares, log_depth=log_depth, target_shares=target_shares, target_log_depth=target_log_depth
        )


def embedding_dim(cfg: ModelConfig) -> int:
    """Width of a model's embedding (`BranchedVAE.embed`): the latent size, plus the 136 TNF with
    model.tnf_readout."""
    return cfg.latent_dim + (N4 if cfg.tnf_readout else 0)


def mean_and_std(sums: Tensor, squares: Tensor, n: float) -> tuple[Tensor, Tensor]:
    """Per-feature mean and standard deviation over n rows from their sums and sums of squares
    (float64); a constant feature keeps std 1."""
    mean = sums / n
    std = (squares / n - mean.pow(2)).clamp_min(0).sqrt()
    return mean, torch.where(std > 1e-3, std, torch.ones_like(std))


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters of a model."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
