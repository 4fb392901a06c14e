"""Configuration: one frozen, validated dataclass per concern, and the ways to fill them.

Every field has a docstring and is checked in `__post_init__`; an error names the key,
the bad value and what is allowed. YAML files and `--set section.key=value` overrides
map onto the same dataclasses through `RunConfig.from_dict`, where an unknown key is an
error, never a silent default. (Modelled on litgpt's `args.py`.)
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from kmervae.base.errors import ConfigError
from kmervae.base.metric_keys import OBJECTIVES, VAL_LOSS, Objective
from kmervae.binning.bins import LEIDEN_RESOLUTION


def check_field(condition: bool, key: str, value: Any, allowed: str) -> None:
    """Refuse a setting with one line naming the key, the bad value and what is allowed."""
    if not condition:
        raise ConfigError(f"{key}={value!r} is invalid: {allowed}")


def either(choices: Sequence[str]) -> str:
    """'a, b or c': the allowed values of a setting, as its error line names them."""
    return ", ".join(choices[:-1]) + " or " + choices[-1]


def check_choice(section: str, config: Any, name: str, choices: Sequence[str]) -> None:
    value = getattr(config, name)
    check_field(value in choices, f"{section}.{name}", value, f"expected {either(choices)}")


def check_bools(section: str, config: Any, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        check_field(isinstance(value, bool), f"{section}.{name}", value, "expected true or false")


def check_ints(section: str, config: Any, minimum: int, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        check_field(
            isinstance(value, int) and value >= minimum, f"{section}.{name}", value, f"expected an integer >= {minimum}"
        )


def check_weights(section: str, config: Any, *names: str) -> None:
    """Each a finite number >= 0 (a loss weight, a scale)."""
    for name in names:
        value = getattr(config, name)
        check_field(
            isinstance(value, (int, float)) and math.isfinite(value) and value >= 0,
            f"{section}.{name}",
            value,
            "expected a finite number >= 0",
        )


def _check_widths(key: str, widths: tuple[int, ...], min_layers: int = 1) -> None:
    check_field(
        len(widths) >= min_layers and all(isinstance(w, int) and w >= 1 for w in widths),
        key,
        list(widths),
        f"expected a list of at least {min_layers} positive integers",
    )


LR_SCHEDULES = ("plateau", "cosine")
"""How the learning rate moves over epochs (train.lr_schedule)."""

ABUNDANCE_INPUTS = ("shares", "log_ratio")
"""What the abundance encoder may see (model.abundance_input)."""


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the branched VAE and its feature transform (docs/contracts.md, "The model")."""

    kmer7_widths: tuple[int, ...] = (1024, 512, 256)
    """Hidden widths of the 7-mer encoder branch (input 8,192 + GC + length); the decoder mirrors them."""
    kmer4_widths: tuple[int, ...] = (128, 64)
    """Hidden widths of the 4-mer encoder branch (input 136 + GC + length)."""
    kmer3_widths: tuple[int, ...] = (64, 32)
    """Hidden widths of the 3-mer encoder branch (input 32 + GC + length)."""
    trunk_widths: tuple[int, ...] = (512,)
    """Hidden widths of the shared trunk between the concatenated branches and the latent."""
    latent_dim: int = 512
    """Size of the latent space (z_mean, z_log_var, z)."""
    gate_k7: bool = True
    """Predict a presence gate for every 7-mer: recon = sigmoid(gate) * value + (1 - sigmoid(gate)) * floor."""
    leaky_slope: float = 0.3
    """Negative slope of LeakyReLU (0.3 is the Keras default the seed used)."""
    batchnorm_momentum: float = 0.01
    """BatchNorm running-statistics momentum, PyTorch convention (Keras' 0.99 is 0.01 here)."""
    batchnorm_eps: float = 1e-3
    """BatchNorm epsilon (the Keras default)."""
    input_dropout: float = 0.0
    """Dropout on the transformed k-mer inputs while training (0 = off)."""
    log_eps: float = 1e-6
    """Pseudo-frequency of the transform: value = log(frequency + log_eps); log(log_eps) is the 'absent' floor."""
    input_norm: str = "none"
    """What the encoder sees of each k-mer block: 'none' (the transformed values), 'zscore' (each
    value minus its mean over the training contigs, divided by its standard deviation; the
    statistics are fitted before the first step and kept in the model's buffers, so exports and
    embeddings stay self-contained) or 'clr' (the centred log-ratio: each contig's values minus
    their mean, which removes the total and keeps only composition)."""
    length_input: bool = True
    """Give every encoder branch log10(length) beside GC (the seed's architecture). Off: the
    embedding cannot place a contig by its length. On the simulated metagenome, models with it
    split large genomes into a bin of long contigs and one of short ones (bench/RESULTS.md
    "The metagenome benchmark: what kept kmervae below the simple baseline")."""
    abundance_widths: tuple[int, ...] = ()
    """Hidden widths of the abundance encoder branch, beside the k-mer branches: its input is each
    contig's share of depth per sample and its z-scored log total depth (VAMB's), its decoder
    mirrors it. Empty (the default): no branch, the seed's architecture; the features' abundance,
    if any, is not read. Needs features made with 'kmervae featurize --abundance'."""
    abundance_input: str = "shares"
    """What the abundance branch's encoder sees beside the z-scored log total depth: 'shares'
    (each sample's share of the contig's scaled depth, VAMB's input) or 'log_ratio' (the log of
    each scaled depth, floored at 1% of the sample's mean, minus the mean of those logs: a
    depth ratio between two contigs counts alike in a deep and in a shallow sample). The decoder
    reconstructs the shares either way."""
    abundance_samples: int = 0
    """Samples of the abundance column of the features the model trains on: set from the feature
    dataset by every trainer (0: features without abundance). Not a setting to choose."""
    tnf_readout: float = 0.0
    """Weight w of the contig's tetranucleotide frequencies in its embedding (the readout), beside
    the latent mean: both at unit length, the TNF times w, the whole at unit length, so that the
    cosine of two contigs is (cos of the latent means + w^2 cos of the TNF) / (1 + w^2). The TNF
    are the untrained baseline's (log-frequencies at a pseudo-frequency of 1e-6, z-scored over the
    training contigs; the statistics are kept in the model's buffers). 0 (the default): the
    embedding is the latent mean alone. With one sample the model's embedding loses composition
    detail that the plain TNF keep (bench/RESULTS.md "Issue 38, lever 5")."""
    tnf_readout_max_samples: int = 0
    """The most samples of abundance with which `tnf_readout` applies: features with more turn it
    off (`RunConfig.for_data`), since with several samples depth separates what composition cannot
    and the TNF pull sibling strains back together. 0: any number of samples."""

    def __post_init__(self) -> None:
        for name in ("kmer7_widths", "kmer4_widths", "kmer3_widths", "trunk_widths", "abundance_widths"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
            _check_widths(f"model.{name}", getattr(self, name), min_layers=0 if name == "abundance_widths" else 1)
        check_field(
            isinstance(self.abundance_samples, int) and self.abundance_samples >= 0,
            "model.abundance_samples",
            self.abundance_samples,
            "expected an integer >= 0 (set from the features)",
        )
        check_field(
            isinstance(self.latent_dim, int) and 1 <= self.latent_dim <= 8192,
            "model.latent_dim",
            self.latent_dim,
            "expected an integer in [1, 8192]",
        )
        check_field(isinstance(self.gate_k7, bool), "model.gate_k7", self.gate_k7, "expected true or false")
        check_field(
            self.abundance_input in ABUNDANCE_INPUTS,
            "model.abundance_input",
            self.abundance_input,
            "expected " + " or ".join(ABUNDANCE_INPUTS),
        )
        check_field(
            isinstance(self.length_input, bool), "model.length_input", self.length_input, "expected true or false"
        )
        check_field(0.0 <= self.leaky_slope < 1.0, "model.leaky_slope", self.leaky_slope, "expected a number in [0, 1)")
        check_field(
            0.0 < self.batchnorm_momentum <= 1.0,
            "model.batchnorm_momentum",
            self.batchnorm_momentum,
            "expected a number in (0, 1]",
        )
        check_field(
            0.0 < self.batchnorm_eps < 1.0, "model.batchnorm_eps", self.batchnorm_eps, "expected a number in (0, 1)"
        )
        check_field(
            0.0 <= self.input_dropout < 1.0, "model.input_dropout", self.input_dropout, "expected a number in [0, 1)"
        )
        check_field(0.0 < self.log_eps < 1.0, "model.log_eps", self.log_eps, "expected a number in (0, 1)")
        norms = ("none", "zscore", "clr")
        check_field(self.input_norm in norms, "model.input_norm", self.input_norm, "expected none, zscore or clr")
        check_field(
            isinstance(self.tnf_readout, (int, float)) and 0.0 <= self.tnf_readout <= 100.0,
            "model.tnf_readout",
            self.tnf_readout,
            "expected a number in [0, 100] (0: the latent mean alone)",
        )
        check_field(
            isinstance(self.tnf_readout_max_samples, int) and self.tnf_readout_max_samples >= 0,
            "model.tnf_readout_max_samples",
            self.tnf_readout_max_samples,
            "expected an integer >= 0 (0: any number of samples)",
        )

    @property
    def floor(self) -> float:
        """Transformed value of an absent k-mer, log(log_eps) (-13.8 by default)."""
        return math.log(self.log_eps)

    @property
    def uses_abundance(self) -> bool:
        """Whether the model has an abundance branch (and reads the features' `abundance` column)."""
        return bool(self.abundance_widths)


PRESETS: dict[str, ModelConfig] = {
    # docs/contracts.md "The model": 19.4M parameters without the gate, 27.8M with it.
    "final": ModelConfig(),
    # The user's first request: 4,096 -> 2,048 / 64 -> 32 / 16 -> 8 / 2,088 -> 1,024 -> 512 -> latent; ~94M.
    "outline": ModelConfig(
        kmer7_widths=(4096, 2048), kmer4_widths=(64, 32), kmer3_widths=(16, 8), trunk_widths=(1024, 512), gate_k7=False
    ),
    # The best measured so far on genomes never seen (PRESET_SETTINGS has its loss and provenance):
    # `final`'s widths, latent 32, z-scored inputs.
    "recommended": ModelConfig(latent_dim=32, input_norm="zscore"),
    # For binning an assembly with read depths (bench/RESULTS.md "Every set, every seed";
    # PRESET_SETTINGS has its loss and training): an abundance branch; a 7-mer branch a quarter
    # as wide (at 1e-3 pseudo-frequency 7-mers carry little, and it is the costly branch); no
    # length input and a pseudo-frequency of 1e-3, so short contigs do not gather on their own;
    # with one or two samples the plain TNF beside the latent mean in the embedding, at equal
    # weight (bench/RESULTS.md "Issue 38, lever 5": +1 to +3 bins with one sample, the spread
    # over seeds down; with four samples they cost the strain set a bin, so they stop above two).
    "metagenome": ModelConfig(
        kmer7_widths=(256, 128),
        latent_dim=32,
        input_norm="zscore",
        length_input=False,
        log_eps=1e-3,
        abundance_widths=(64, 32),
        tnf_readout=1.0,
        tnf_readout_max_samples=2,
    ),
    # For tests and smoke runs: same shape, tiny widths.
    "tiny": ModelConfig(
        kmer7_widths=(64, 32), kmer4_widths=(16,), kmer3_widths=(16,), trunk_widths=(32,), latent_dim=8
    ),
}


@dataclass(frozen=True)
class LossConfig:
    """Weights of the loss terms: scale * (w7*L7 + w4*MSE4 + w3*MSE3 + wgc*MSEgc [+ wab*Lab]) + beta * KL.

    Whether the 7-mer term uses the gate follows `ModelConfig.gate_k7` (one source of
    truth: a gated loss without a gate head cannot exist). The 'absent' floor is
    `ModelConfig.floor`, derived from the transform's `log_eps` for the same reason.
    """

    w7: float = 1.0
    """Weight of the 7-mer reconstruction term L7."""
    w4: float = 1.0
    """Weight of the 4-mer MSE."""
    w3: float = 1.0
    """Weight of the 3-mer MSE."""
    wgc: float = 1.0
    """Weight of the GC MSE."""
    scale: float = 1.0
    """Overall factor on the reconstruction (the balance against KL). The seed's script summed the
    squared errors of all 8,361 output features; the four group means weighted equally and
    multiplied by 2,090 (= 8,361 / 4) keep that magnitude, which is what `final` used. At scale 1
    and beta 1 the KL weighs about 2,000 times more than in the seed, and collapse is optimal."""
    beta: float = 1.0
    """Weight of the KL divergence once warm-up is over (values down to 1e-4 are meaningful)."""
    beta_warmup_epochs: int = 0
    """Epochs over which beta rises linearly from 0 (0 = full beta from the first epoch)."""
    beta_schedule: str = "linear"
    """'linear' (warm up once over beta_warmup_epochs) or 'cyclical' (Fu et al. 2019: every
    beta_cycle_epochs, beta rises linearly from 0 over the first half of the cycle, then holds)."""
    beta_cycle_epochs: int = 10
    """Length of one cycle of the cyclical schedule, in epochs."""
    free_bits: float = 0.0
    """KL floor per latent dimension in nats (Kingma et al. 2016): each dimension's batch-mean
    KL below it costs the floor, so the optimiser gains nothing by collapsing it (0 = off)."""
    cross_view: bool = False
    """Cross-view training: each contig's counts are split binomially on the device into two views
    (each k-mer window goes to view A with probability view_fraction); the encoder sees view A and
    the decoder reconstructs view B, so only what the halves share (the genome's signal) pays."""
    view_fraction: float = 0.5
    """Share of each count that goes to view A (cross_view, infonce)."""
    abundance_views: str = "shared"
    """What each view of a contig carries of its depths (models with an abundance branch):
    'shared' (both views carry the contig's own depths) or 'thinned' (the depth that view's share
    of the reads would give: the reads a depth implies, depth * length / READ_LENGTH, thinned
    binomially like the k-mer windows and scaled back, so two views of one contig differ by
    sampling noise as two fragments' depths do). Shared made more near-complete bins on the
    simulated four-sample community (medians 6 and 5 against 5 and 3 over three seeds at two
    temperatures: bench/RESULTS.md "A first comparison on a simulated metagenome")."""
    infonce: float = 0.0
    """Weight of an InfoNCE term between the two views of each contig (0 = off): both views are
    encoded in one forward pass (the batch doubles), each view's readout must pick its partner
    among the batch's other contigs (`loss.info_nce`). Each view's reconstruction target is the
    other view under cross_view, else the whole contig."""
    infonce_prior: float = 0.0
    """Debiased InfoNCE (Chuang et al. 2020): the expected share of a batch's other contigs that
    come from a contig's own genome (about 1 / the number of genomes of similar size); their
    pull-apart is discounted. 0 = plain InfoNCE."""
    supcon: float = 0.0
    """Weight of a supervised contrastive term on genome labels (Khosla et al. 2020; 0 = off):
    contigs with one label are pulled together, others pushed apart. USES LABELS: a model
    trained with it is not label-free (runs are tagged kmervae.uses_labels); needs labelled
    features. Contigs without a label take part only as negatives."""
    temperature: float = 0.1
    """Temperature of the contrastive terms (cosine similarities are divided by it)."""
    gate_bce_weight: float = 1.0
    """Weight of the gate's binary cross-entropy inside L7 (gated models only)."""
    presence_threshold: int = 0
    """A 7-mer is 'present' when its count is greater than this (decided on counts, not log values)."""
    wab: float = 1.0
    """Weight of the abundance term (models with model.abundance_widths), VAMB's loss
    (vamb/encode.py calc_loss): the cross-entropy of the per-sample depth shares weighted by
    (n - 1) / (n log n) for n samples (0 with one sample: the shares are then constant) plus the
    squared error of the z-scored log total depth divided by n. Inside `scale` like the k-mer terms."""

    def __post_init__(self) -> None:
        check_weights("loss", self, "w7", "w4", "w3", "wgc", "scale", "beta", "gate_bce_weight", "wab")
        check_field(
            self.w7 + self.w4 + self.w3 + self.wgc > 0,
            "loss.w7+w4+w3+wgc",
            self.w7 + self.w4 + self.w3 + self.wgc,
            "at least one reconstruction weight must be > 0",
        )
        check_ints("loss", self, 0, "beta_warmup_epochs", "presence_threshold")
        check_choice("loss", self, "beta_schedule", ("linear", "cyclical"))
        check_ints("loss", self, 2, "beta_cycle_epochs")
        check_field(
            math.isfinite(self.free_bits) and self.free_bits >= 0,
            "loss.free_bits",
            self.free_bits,
            "expected a number >= 0",
        )
        check_bools("loss", self, "cross_view")
        check_field(
            0.0 < self.view_fraction < 1.0, "loss.view_fraction", self.view_fraction, "expected a number in (0, 1)"
        )
        check_choice("loss", self, "abundance_views", ("thinned", "shared"))
        check_weights("loss", self, "infonce", "supcon")
        check_field(
            isinstance(self.infonce_prior, (int, float)) and 0.0 <= self.infonce_prior < 1.0,
            "loss.infonce_prior",
            self.infonce_prior,
            "expected a number in [0, 1)",
        )
        check_field(
            isinstance(self.temperature, (int, float)) and 0.0 < self.temperature <= 10.0,
            "loss.temperature",
            self.temperature,
            "expected a number in (0, 10]",
        )

    @property
    def paired_views(self) -> bool:
        """Whether training encodes both thinned views of every contig (the InfoNCE term needs them)."""
        return self.infonce > 0

    @property
    def thins_depths(self) -> bool:
        """Whether the two views of a contig carry thinned depths (loss.abundance_views=thinned)."""
        return self.abundance_views == "thinned"

    @property
    def uses_labels(self) -> bool:
        """Whether the loss reads genome labels (a supervised term is on)."""
        return self.supcon > 0

    def beta_at(self, epoch: int) -> float:
        """Beta for a 0-based epoch. Linear warm-up: epoch e of N gets beta * (e + 1) / N; cyclical:
        the same ramp over the first half of every cycle of beta_cycle_epochs, then beta."""
        if self.beta_schedule == "cyclical":
            ramp = self.beta_cycle_epochs / 2
            return self.beta * min(1.0, (epoch % self.beta_cycle_epochs + 1) / ramp)
        if self.beta_warmup_epochs == 0:
            return self.beta
        return self.beta * min(1.0, (epoch + 1) / self.beta_warmup_epochs)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation: Adam, a learning-rate schedule (plateau or cosine), clipping, precision, seeds."""

    epochs: int = 100
    """Passes over the training split."""
    batch_size: int = 256
    """Contigs per optimiser step (per worker under DDP)."""
    lr: float = 1e-3
    """Adam learning rate."""
    weight_decay: float = 0.0
    """Adam weight decay (L2)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 = off)."""
    plateau_factor: float = 0.5
    """ReduceLROnPlateau factor (seed: 0.5)."""
    plateau_patience: int = 20
    """ReduceLROnPlateau patience in epochs (seed: 20)."""
    min_lr: float = 1e-6
    """Lower bound of the learning rate under either schedule (seed: 1e-6)."""
    lr_schedule: str = "plateau"
    """'plateau' (ReduceLROnPlateau on val/loss, the seed's) or 'cosine' (each epoch's rate falls
    along half a cosine from the scaled train.lr at the first epoch towards train.min_lr after the
    last, as VAMB's batch doubling lowers its gradient noise: the weights a run ends on are an
    annealed minimum, not one noisy step of a constant rate; bench/RESULTS.md "Issue 38")."""
    seed: int = 0
    """Seed of weights, shuffling and sampling; CPU runs are reproducible bit for bit."""
    device: str = "auto"
    """'auto' (cuda when available), 'cpu', 'cuda' or 'cuda:N'."""
    precision: str = "fp32"
    """'fp32' or 'bf16' (autocast on CUDA)."""
    compile: bool = False
    """torch.compile the model (CUDA; falls back to eager with a warning when compilation fails)."""
    lr_scaling: str = "sqrt"
    """How the learning rate follows the batch size: lr * (batch_size / lr_reference_batch) ** p,
    p = 0.5 ('sqrt', for Adam), 1 ('linear') or 0 ('none')."""
    lr_reference_batch: int = 256
    """The batch size at which train.lr applies unscaled."""
    resident: str = "auto"
    """GPU-resident data: 'auto' (when the training shard fits in half the free GPU memory),
    'on' or 'off' (stream batches from host memory / Ray Data every epoch)."""
    bn_stats: str = "recompute"
    """BatchNorm statistics that validation, checkpoints and exports use. 'recompute': after each
    epoch, recomputed with the final weights over the epoch's first train.bn_contigs training
    contigs (kept as they streamed by: no second read), as torch.optim.swa_utils.update_bn does;
    'epoch': the plain average of the epoch's training-batch statistics (free, but it mixes the
    weights of the whole epoch); 'ema': the running average with model.batchnorm_momentum, as
    the seed's Keras script. After few steps 'ema' still holds mostly its initial values, which
    distorts early validation and so ASHA's decisions (bench/RESULTS.md "BatchNorm statistics")."""
    bn_contigs: int = 8192
    """Training contigs that 'recompute' uses per epoch (each worker): kept on the device."""
    nc_bins: bool = False
    """Report val/nc_bins every epoch: near-complete bins when the validation contigs are binned
    as `kmervae bin` does (kmervae.binning.bins; needs labels). Off by default: clustering costs
    seconds per epoch; a sweep ranking on val/nc_bins turns it on."""
    est_nc_bins: bool = False
    """Report val/est_nc_bins every epoch: the near-complete bins estimated from single-copy marker
    genes (no labels needed) when every contig is binned as `kmervae bin` does; needs the dataset's
    markers (markers.tsv in the feature folder: `featurize --markers`, or `kmervae markers ASSEMBLY
    -o FEATURES/markers.tsv`). Off by default: clustering costs seconds per epoch; a sweep ranking
    on val/est_nc_bins turns it on."""
    bin_resolution: float = LEIDEN_RESOLUTION
    """Leiden resolution that val/nc_bins and val/est_nc_bins bin with (`kmervae bin --resolution`): a binning sweep
    can choose the clusterer's setting beside the model's."""

    @property
    def effective_lr(self) -> float:
        """train.lr scaled to train.batch_size by train.lr_scaling."""
        power = {"sqrt": 0.5, "linear": 1.0, "none": 0.0}[self.lr_scaling]
        return self.lr * (self.batch_size / self.lr_reference_batch) ** power

    def __post_init__(self) -> None:
        check_ints("train", self, 1, "epochs")
        check_field(
            isinstance(self.batch_size, int) and 2 <= self.batch_size <= 65536,
            "train.batch_size",
            self.batch_size,
            "expected an integer in [2, 65536] (BatchNorm needs 2)",
        )
        check_field(0 < self.lr <= 1, "train.lr", self.lr, "expected a number in (0, 1]")
        check_field(self.weight_decay >= 0, "train.weight_decay", self.weight_decay, "expected a number >= 0")
        check_field(self.grad_clip >= 0, "train.grad_clip", self.grad_clip, "expected a number >= 0 (0 = off)")
        check_field(
            0 < self.plateau_factor < 1, "train.plateau_factor", self.plateau_factor, "expected a number in (0, 1)"
        )
        check_ints("train", self, 0, "plateau_patience")
        check_field(
            0 <= self.min_lr <= self.lr, "train.min_lr", self.min_lr, f"expected a number in [0, train.lr={self.lr}]"
        )
        check_choice("train", self, "lr_schedule", LR_SCHEDULES)
        check_ints("train", self, 0, "seed")
        check_field(
            self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
            "train.device",
            self.device,
            "expected auto, cpu, cuda or cuda:N",
        )
        check_choice("train", self, "precision", ("fp32", "bf16"))
        check_choice("train", self, "bn_stats", ("recompute", "epoch", "ema"))
        check_ints("train", self, 2, "bn_contigs")
        check_bools("train", self, "compile", "nc_bins", "est_nc_bins")
        check_field(
            isinstance(self.bin_resolution, (int, float)) and 0 < self.bin_resolution <= 10,
            "train.bin_resolution",
            self.bin_resolution,
            "expected a number in (0, 10]",
        )
        check_choice("train", self, "lr_scaling", ("sqrt", "linear", "none"))
        check_ints("train", self, 1, "lr_reference_batch")
        check_choice("train", self, "resident", ("auto", "on", "off"))


@dataclass(frozen=True)
class DataConfig:
    """Which contigs train and which validate."""

    val_fraction: float = 0.1
    """Fraction of contigs held out for validation, chosen by a hash of contig_id (stable across runs)."""
    split_salt: str = "kmervae"
    """Salt of that hash: change it to draw a different validation set."""
    max_samples: int | None = None
    """Use at most this many contigs, a subsample chosen by a second hash of contig_id (None = all)."""
    val_split: str = "contig"
    """'contig': a val_fraction share of contigs validates (their genomes are also trained on);
    'genome': whole labels are held out (those whose salted hash of the label is below
    val_fraction, at least 2 so that kNN accuracy can tell genomes apart), so embedding metrics
    measure genomes never trained on. Needs labels (3 or more); unlabelled contigs train.
    'all': every contig trains and validates, the protocol of a binner, which bins the assembly it
    trained on: val/nc_bins then counts the near-complete bins of the whole assembly (a tenth of
    an assembly makes few bins of 200 kb), and val/loss measures fit, not generalisation."""

    def __post_init__(self) -> None:
        check_field(
            0.0 < self.val_fraction < 1.0, "data.val_fraction", self.val_fraction, "expected a number in (0, 1)"
        )
        check_field(isinstance(self.split_salt, str), "data.split_salt", self.split_salt, "expected a string")
        check_field(
            self.max_samples is None or (isinstance(self.max_samples, int) and self.max_samples >= 4),
            "data.max_samples",
            self.max_samples,
            "expected an integer >= 4 or null",
        )
        check_field(
            self.val_split in ("contig", "genome", "all"),
            "data.val_split",
            self.val_split,
            "expected contig, genome or all",
        )

    @property
    def whole_assembly(self) -> bool:
        """Whether every contig trains and validates (val_split=all, a binner's protocol)."""
        return self.val_split == "all"


@dataclass(frozen=True)
class RunConfig:
    """Everything a training run needs, one section per concern."""

    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def for_data(self, samples: tuple[str, ...]) -> RunConfig:
        """This configuration for features whose abundance column has `samples` (empty: none):
        `model.abundance_samples` set from them, the one way every trainer sets it, and
        `model.tnf_readout` off above `model.tnf_readout_max_samples`. An abundance branch without
        abundance, or a model trained on another number of samples, is refused."""
        self.check_samples(len(samples))
        model = self.model
        tnf = model.tnf_readout
        if model.tnf_readout_max_samples and len(samples) > model.tnf_readout_max_samples:
            tnf = 0.0  # with this many samples depth separates genomes; the TNF would merge strains
        return dataclasses.replace(
            self, model=dataclasses.replace(model, abundance_samples=len(samples), tnf_readout=tnf)
        )

    def check_samples(self, samples: int) -> None:
        """Refuse an abundance branch for features without abundance (`samples` = 0), or a model
        set up for another number of samples than the features have."""
        model = self.model
        if model.uses_abundance and not samples:
            raise ConfigError(
                f"model.abundance_widths={list(model.abundance_widths)} needs features with abundance; "
                "featurize with --abundance depth.tsv ('kmervae abundance BAM... -o depth.tsv'), or set "
                "model.abundance_widths=[]"
            )
        if model.abundance_samples not in (0, samples):
            raise ConfigError(
                f"the model was set up for abundance of {model.abundance_samples} sample(s), these features "
                f"have {samples}; train a new model on them"
            )

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain nested dict (tuples as lists): what checkpoints, YAML and MLflow store."""
        return {name: _plain(dataclasses.asdict(getattr(self, name))) for name in _SECTIONS}

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: RunConfig | None = None) -> RunConfig:
        """Build from nested {section: {key: value}}; unknown sections or keys are errors."""
        base = base or cls()
        if not isinstance(data, dict):
            raise ConfigError(
                f"a configuration must be a mapping of sections {list(_SECTIONS)}, got {type(data).__name__}"
            )
        sections = {}
        for name, values in data.items():
            if name not in _SECTIONS:
                raise ConfigError(f"unknown configuration section {name!r}; allowed: {', '.join(_SECTIONS)}")
            if not isinstance(values, dict):
                raise ConfigError(f"section {name!r} must be a mapping of keys to values")
            sections[name] = _replace(getattr(base, name), name, values)
        return dataclasses.replace(base, **sections)

    def with_values(self, values: Mapping[str, Any]) -> RunConfig:
        """Typed changes by `section.key` (a preset's settings, a sweep trial's sampled values),
        each checked against its field's type; nothing here is parsed from text."""
        return RunConfig.from_dict(nest(values), base=self)

    def with_overrides(self, overrides: Sequence[str]) -> RunConfig:
        """Apply `section.key=value` strings from a command line (`parse_overrides`)."""
        return self.with_values(parse_overrides(overrides))

    def with_train(self, **changes: Any) -> RunConfig:
        """This configuration with `train` fields changed (`TrainConfig` checks them)."""
        return dataclasses.replace(self, train=dataclasses.replace(self.train, **changes))

    @classmethod
    def from_yaml(cls, path: str | Path, base: RunConfig | None = None) -> RunConfig:
        """Read a YAML file of sections (model, loss, train, data)."""
        import yaml  # only YAML files need PyYAML: bare GPU hosts train without it

        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such configuration file") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({err})") from None
        try:
            return cls.from_dict(data, base)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None


_SECTIONS = {"model": ModelConfig, "loss": LossConfig, "train": TrainConfig, "data": DataConfig}


@dataclass(frozen=True)
class SweepConfig:
    """How a sweep searches, stops trials early, and where it keeps its state."""

    name: str = "latent-sweep"
    """Sweep name: its folder under `storage`, its MLflow parent run, the key for --resume."""
    storage: str = "runs/sweeps"
    """Folder (made absolute) where Tune and Train keep trial state and checkpoints."""
    metric: str = VAL_LOSS
    """Objective: val/knn_acc, val/kmeans_ari or val/nc_bins (maximised; need labels; val/nc_bins
    turns train.nc_bins on), val/link_agreement (label-free), or val/loss (minimised; it ranks only
    trials that share their loss settings and latent size)."""
    num_samples: int = 8
    """Trials to run (with `seeds` > 1: settings x seeds)."""
    seeds: int = 1
    """Training seeds per setting: each setting the sampler proposes trains this many times, with
    train.seed = the sweep's seed + 0, 1, ..., and settings rank on the median of their trials' best
    epochs (one seed's count of bins can differ from the next seed's by two or three: bench/RESULTS.md
    "Issue 38"). Above 1, ASHA is off: stopping some seeds of a setting early would bias its median
    (Ray's own `Repeater` docs say the same)."""
    max_concurrent: int | None = None
    """Trials at once (None: as many as the cluster fits)."""
    workers_per_trial: int = 1
    """Ray Train workers per trial."""
    gpus_per_trial: float | None = None
    """GPUs per trial, spread over its workers (None: one per worker when the cluster has them; 0: CPU)."""
    seed: int = 0
    """Seed of the TPE sampler (and of every trial's training)."""
    grace_period: int = 2
    """ASHA: epochs every trial runs before it can be stopped."""
    reduction_factor: int = 3
    """ASHA: keep the top 1/reduction_factor at each rung."""
    experiment: str = "kmervae-sweeps"
    """MLflow experiment of the parent and child runs."""
    register_as: str = "kmervae-encoder"
    """Registered model name for the best trial's checkpoint ('' to skip)."""
    alias: str = "champion"
    """Registry alias set on the registered version."""

    def __post_init__(self) -> None:
        check_field(
            bool(self.name) and "/" not in self.name, "sweep.name", self.name, "expected a non-empty name without '/'"
        )
        check_field(self.metric in OBJECTIVES, "--metric", self.metric, f"expected one of {', '.join(OBJECTIVES)}")
        check_field(self.num_samples >= 1, "--samples", self.num_samples, "expected an integer >= 1")
        check_field(isinstance(self.seeds, int) and self.seeds >= 1, "--seeds", self.seeds, "expected an integer >= 1")
        check_field(
            self.num_samples % self.seeds == 0,
            "--samples",
            self.num_samples,
            f"expected a multiple of --seeds={self.seeds} (settings x seeds trials)",
        )
        check_field(
            self.max_concurrent is None or self.max_concurrent >= 1,
            "--max-concurrent",
            self.max_concurrent,
            "expected an integer >= 1",
        )
        check_field(
            self.workers_per_trial >= 1, "--workers-per-trial", self.workers_per_trial, "expected an integer >= 1"
        )
        check_field(
            self.gpus_per_trial is None or self.gpus_per_trial >= 0,
            "--gpus-per-trial",
            self.gpus_per_trial,
            "expected a number >= 0",
        )
        check_field(self.grace_period >= 1, "sweep.grace_period", self.grace_period, "expected an integer >= 1")
        check_field(
            self.reduction_factor >= 2, "sweep.reduction_factor", self.reduction_factor, "expected an integer >= 2"
        )
        check_field(isinstance(self.storage, str) and bool(self.storage), "--storage", self.storage, "expected a path")
        check_field(isinstance(self.seed, int) and self.seed >= 0, "--seed", self.seed, "expected an integer >= 0")
        check_field(bool(self.experiment), "--experiment", self.experiment, "expected a non-empty name")
        check_field(isinstance(self.register_as, str), "--register-as", self.register_as, "expected a name or ''")
        check_field(bool(self.alias), "sweep.alias", self.alias, "expected a non-empty alias")

    @property
    def objective(self) -> Objective:
        """The sweep's objective: which epoch of a trial is its best, and which way is better."""
        return Objective(self.metric)

    @property
    def mode(self) -> str:
        """'min' or 'max': which way the objective is better."""
        return self.objective.mode


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """The one reader of settings written as text: `section.key=value` strings (`--set`) ->
    {section.key: value}, values by `parse_value`. Everything after it passes values."""
    values: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. model.latent_dim=64")
        values[f"{section}.{name}"] = parse_value(raw)
    return values


def nest(values: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """{'model.latent_dim': 64} -> {'model': {'latent_dim': 64}}: the shape `from_dict` reads."""
    nested: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        section, dot, name = key.partition(".")
        if not dot or not name:
            raise ConfigError(f"setting {key!r}: expected section.key, e.g. model.latent_dim")
        nested.setdefault(section, {})[name] = value
    return nested


def parse_value(raw: str) -> Any:
    """A --set value: JSON (64, 1e-3, [128, 64], "x"), true/false/null in any case, else the string.
    'none' stays a string: it is a value of model.input_norm and train.lr_scaling."""
    text = raw.strip()
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("null", "~", ""):
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _replace(current: Any, section: str, values: dict[str, Any]) -> Any:
    """dataclasses.replace with type coercion and errors that name section.key."""
    known = {f.name: f for f in fields(current)}
    hints = typing.get_type_hints(type(current))
    changes = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"unknown key {section}.{key}; allowed: {', '.join(known)}")
        changes[key] = _coerce(f"{section}.{key}", value, hints[key])
    try:
        return dataclasses.replace(current, **changes)
    except TypeError as err:
        raise ConfigError(f"section {section}: {err}") from None


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Turn a YAML/CLI value into the field's type, or say what was expected."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        return _coerce(key, value, hint)
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if isinstance(items, int):
            items = [items]
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{key}={value!r} is invalid: expected a list such as [128, 64]")
        return tuple(_coerce(key, parse_value(i) if isinstance(i, str) else i, args[0]) for i in items)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}={value!r} is invalid: expected true or false")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}={value!r} is invalid: expected an integer")
    if hint is float:
        if isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}={value!r} is invalid: expected a number")
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # --set data.split_salt=2024
        raise ConfigError(f"{key}={value!r} is invalid: expected a string")
    return value


def preset(name: str) -> ModelConfig:
    """A named architecture preset."""
    if name not in PRESETS:
        raise ConfigError(f"--preset {name!r} is unknown; allowed: {', '.join(PRESETS)}")
    return PRESETS[name]


PRESET_SETTINGS: dict[str, dict[str, Any]] = {
    # The seed's loss exactly: the four group MSEs weighted equally and multiplied by 2,090
    # (LossConfig.scale), beta 1 from the first epoch (the defaults otherwise).
    "final": {"loss.scale": 2090.0},
    # Provenance: bench/RESULTS.md "Quality sweeps, contrastive levers and what limits the target"
    # (2026-11-27, commit of that entry; bench/quality_levers.py config `xview-infonce`, the ten
    # shared genomes as 5 kb contigs, six trained on, four never seen). Cross-view
    # reconstruction (encode one binomially thinned half of each contig, reconstruct the other),
    # the 7-mer term at 0.1 (at ~0.6 counts per 7-mer it is mostly sampling noise), an InfoNCE
    # term between the halves, no KL: the only configuration whose scores on unseen genomes rise
    # with training, and the first above TNF's k-means ARI there (0.893 against 0.888; 1-NN 0.990
    # against 0.993). It does not beat PCA-32 (0.998 / 0.940), nor TNF on contigs it trained on.
    # Checked against two real quality sweeps (bench/RESULTS.md "recommended against the sweeps'
    # trials", commit 204a607): on the four hardest unseen genomes it beat all 24 trials on
    # k-means ARI (0.76-0.78 against at most 0.68) and tied the best on kNN accuracy (0.944).
    "recommended": {
        "loss.cross_view": True,
        "loss.w7": 0.1,
        "loss.beta": 0.0,
        "loss.infonce": 1.0,
        "loss.temperature": 0.1,
    },
    # Provenance: bench/RESULTS.md "The metagenome benchmark: what kept kmervae below the simple
    # baseline" and "Every set, every seed" (issue 26). A plain VAE (no cross
    # views, no InfoNCE: identical depths in both views let InfoNCE tell contigs apart by their
    # depth noise), VAMB's balance of abundance over composition (loss.wab=16), a small KL
    # weight, no 7-mer reconstruction term, more steps per epoch (batch 64), and every contig
    # trains and validates (a binner bins the assembly it trained on).
    "metagenome": {
        "loss.w7": 0.0,
        "loss.wab": 16.0,
        "loss.beta": 0.001,
        "train.batch_size": 64,
        "train.epochs": 10,
        "data.val_split": "all",
    },
}
"""The loss, training and data settings that belong to a preset, beside its architecture."""


SIZE_FIELDS = ("kmer7_widths", "kmer4_widths", "kmer3_widths", "trunk_widths", "latent_dim")
"""What `preset_config(..., architecture=...)` takes from the other preset: the network's size."""


def preset_config(name: str, architecture: str | None = None) -> RunConfig:
    """A preset's whole starting point: its model and its settings (`--set` and YAML files apply
    on top). `architecture` shrinks it to another preset's size (widths and latent size) and
    keeps everything else (smoke tests run a preset on `tiny`'s size)."""
    model = preset(name)
    if architecture is not None:
        size = preset(architecture)
        model = dataclasses.replace(model, **{field: getattr(size, field) for field in SIZE_FIELDS})
    return RunConfig(model=model).with_values(PRESET_SETTINGS.get(name, {}))
