"""The epoch loop every engine shares, and its parts: optimizer and scheduler, training and
validation epochs, the embedding scores, BatchNorm statistics, torch.compile with a fallback.

`train_epoch` and `validate_epoch` are free functions over an iterable of `CountBatch`; the
Ray worker loop calls the same functions with its shard's batches and an `all_reduce` that
sums across ranks (Ray's torch_regression_example shape). A run is set up, and the local
engine runs, in `run_setup`. Needs only torch, numpy and pyarrow.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from kmervae.base.errors import ConfigError, KmervaeError, TrainingDiverged
from kmervae.base.metric_keys import (
    BETA,
    DATA_WAIT_S,
    EPOCH,
    LR,
    SAMPLES_PER_S,
    TRAIN_LOSS,
    TRAIN_S,
    VAL_EST_NC_BINS,
    VAL_KMEANS_ARI,
    VAL_KNN_ACC,
    VAL_LINK_AGREEMENT,
    VAL_LOSS,
    VAL_NC_BINS,
    VAL_VIEW_AGREEMENT,
    VALIDATION,
)
from kmervae.binning.bins import DEFAULT_MIN_BIN_SIZE, estimated_near_complete_bins, near_complete_bins
from kmervae.binning.markers import KeyedMarkers
from kmervae.core.checkpoint import unwrap
from kmervae.core.config import LossConfig, RunConfig, TrainConfig
from kmervae.core.data import (
    LINK_COLUMNS,
    CountBatch,
    EpochData,
    ValidationBatch,
)
from kmervae.core.loss import contrastive_loss, split_depths, split_views, vae_loss
from kmervae.core.metrics import (
    VIEW_CONTIGS,
    VIEW_SEED,
    EpochMetrics,
    kmeans_ari,
    knn_accuracy,
    link_agreement,
    view_agreement,
)
from kmervae.core.model import N3, N4, N7

AllReduce = Callable[[Tensor], None]
"""Sums a tensor in place across ranks (torch.distributed.all_reduce); None in one process."""


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; refuse cuda on a host without one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} but this host has no CUDA device; use cpu or auto")
    return torch.device(name)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast when asked for, a no-op otherwise."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Adam:
    """Adam at train.lr scaled to the batch size (fused on CUDA: one kernel per step, not one per parameter)."""
    return torch.optim.Adam(
        model.parameters(), lr=cfg.effective_lr, weight_decay=cfg.weight_decay, fused=device.type == "cuda"
    )


Scheduler = torch.optim.lr_scheduler.LRScheduler
"""What `make_scheduler` returns; `run_epochs` calls `step(val_loss)` once after every epoch."""


class CosineEpochs(torch.optim.lr_scheduler.LambdaLR):
    """Half a cosine over the run's epochs: epoch e trains at min + (lr - min) (1 + cos(pi e / E)) / 2.

    Stepped like ReduceLROnPlateau (`step(val_loss)`, the metric unused) so that the epoch loop
    has one call for both schedules; its state is LambdaLR's, so checkpoints resume it."""

    def __init__(self, optimizer: torch.optim.Optimizer, epochs: int, min_lr: float) -> None:
        peak = optimizer.param_groups[0]["lr"]
        floor = min(min_lr / peak, 1.0) if peak > 0 else 0.0

        def factor(epoch: int) -> float:
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(epoch, epochs) / epochs))

        super().__init__(optimizer, factor)

    def step(self, metric: float | None = None) -> None:  # noqa: ARG002 - the plateau schedule's signature
        super().step()


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> Scheduler:
    """train.lr_schedule: ReduceLROnPlateau on val/loss (seed: factor 0.5, patience 20, min 1e-6) or `CosineEpochs`."""
    if cfg.lr_schedule == "cosine":
        return CosineEpochs(optimizer, cfg.epochs, cfg.min_lr)
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience, min_lr=cfg.min_lr
    )


def check_labels_for(config: RunConfig, labeled: bool) -> None:
    """Refuse a supervised loss on features without labels (before any output is made)."""
    if config.loss.uses_labels and not labeled:
        raise ConfigError(
            "loss.supcon > 0 trains on genome labels, but these features have none; "
            "featurize with --label-from-filename or --labels, or set loss.supcon=0"
        )
    if config.train.nc_bins and not labeled:
        raise ConfigError(
            "train.nc_bins counts near-complete bins against genome labels, but these features have none; "
            "featurize with --label-from-filename or --labels, or set train.nc_bins=false"
        )


def training_views(batch: CountBatch, codes: Tensor | None, cfg: LossConfig):
    """What one training step feeds the model: (inputs, reconstruction targets, label codes).

    Plain: the contigs reconstruct themselves. cross_view: view A in, view B as the target.
    paired views (InfoNCE): A and B stacked into one batch, one forward pass for both, each
    reconstructing the other view under cross_view, else the whole contig."""
    if not (cfg.cross_view or cfg.paired_views):
        return batch, batch, codes
    a, b = split_batch(batch, cfg.view_fraction, thin_depths=cfg.thins_depths)
    if not cfg.paired_views:
        return a, b, codes
    stack = lambda x, y: CountBatch.cat([x, y])  # noqa: E731
    targets = stack(b, a) if cfg.cross_view else stack(batch, batch)
    return stack(a, b), targets, None if codes is None else torch.cat([codes, codes])


def train_epoch(
    model: nn.Module,
    batches: Iterable[tuple[CountBatch, Tensor | None]],
    optimizer: torch.optim.Optimizer,
    loss_cfg: LossConfig,
    beta: float,
    *,
    device: torch.device,
    grad_clip: float = 0.0,
    precision: str = "fp32",
    all_reduce: AllReduce | None = None,
) -> dict[str, float]:
    """One pass of optimisation; returns train/loss (sample-weighted mean) and samples_per_s."""
    model.train()
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # loss * samples, samples
    started = time.perf_counter()
    data_wait = 0.0
    fetch = time.perf_counter()
    for batch, codes in batches:
        batch = batch.to(device, non_blocking=True)
        data_wait += time.perf_counter() - fetch
        batch, target, codes = training_views(batch, codes, loss_cfg)
        with autocast(device, precision):
            out = model(*batch) if target is batch else model(*batch, target=target)
        terms = vae_loss(out, target.kmer7, loss_cfg, beta)
        loss = terms.loss
        extra = contrastive_loss(out.mu, codes, loss_cfg)
        if extra is not None:
            loss = loss + extra
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        contigs = len(batch.length) // (2 if loss_cfg.paired_views else 1)
        sums[0] += loss.detach().double() * contigs
        sums[1] += contigs
        fetch = time.perf_counter()
    if all_reduce is not None:
        all_reduce(sums)
    loss_sum, samples = sums.tolist()
    seconds = time.perf_counter() - started
    if samples == 0:
        raise KmervaeError("the training split produced no batch; featurize more contigs or lower train.batch_size")
    loss = loss_sum / samples
    if not math.isfinite(loss):
        raise TrainingDiverged(
            f"training loss became {loss}; lower train.lr, raise train.grad_clip protection, or check the features"
        )
    return {TRAIN_LOSS: loss, SAMPLES_PER_S: samples / seconds, DATA_WAIT_S: data_wait, TRAIN_S: seconds}


class Validation(NamedTuple):
    """What `validate_epoch` measured, and what the embedding metrics need from every rank."""

    metrics: dict[str, float]
    embeddings: Tensor | None  # (n, embedding_dim) readouts (`BranchedVAE.embed`) in batch order, with keep_embeddings
    codes: Tensor | None  # (n,) label codes that came with the batches
    links: Tensor | None  # (n, 2) must-link keys that came with the batches
    lengths: Tensor | None  # (n,) contig lengths, for val/nc_bins
    views: Tensor | None  # (view_contigs, 2, embedding_dim) readouts of the two thinned halves


@torch.no_grad()
def validate_epoch(
    model: nn.Module,
    batches: Iterable[ValidationBatch],
    loss_cfg: LossConfig,
    beta: float,
    *,
    device: torch.device,
    precision: str = "fp32",
    all_reduce: AllReduce | None = None,
    keep_embeddings: bool = False,
    view_contigs: int = 0,
) -> Validation:
    """Exact validation metrics over all batches (and every rank); optionally the readouts
    (`BranchedVAE.embed`) with the label codes and must-link keys that came with the batches, in the same
    order; and for the first `view_contigs` contigs the readouts of their two thinned halves."""
    model.eval()
    plain = unwrap(model)
    samples = plain.cfg.abundance_samples if plain.cfg.uses_abundance else 0
    metrics = EpochMetrics(plain.cfg.latent_dim, plain.cfg.gate_k7, device, samples)
    embeddings, codes, links, lengths, views = [], [], [], [], []
    viewed = 0
    generator = torch.Generator(device=device).manual_seed(VIEW_SEED)  # the same halves every epoch
    for batch, batch_codes, batch_links in batches:
        batch = batch.to(device, non_blocking=True)
        with autocast(device, precision):
            out = model(*batch)
            if viewed < view_contigs:
                head = batch.head(view_contigs - viewed)
                a, b = split_batch(head, 0.5, generator, thin_depths=loss_cfg.thins_depths)
                views.append(torch.stack([model(*a).embedding.float(), model(*b).embedding.float()], dim=1).cpu())
                viewed += len(a.length)
        metrics.update(out, batch.kmer7, loss_cfg)
        if keep_embeddings:
            embeddings.append(out.embedding.float().cpu())
            lengths.append(batch.length.cpu())
            if batch_codes is not None:
                codes.append(batch_codes.cpu())
            if batch_links is not None:
                links.append(batch_links.cpu())
    if all_reduce is not None:
        all_reduce(metrics.state)
    values = metrics.compute(loss_cfg, beta, prefix=VALIDATION)
    cat = lambda parts: torch.cat(parts) if parts else None  # noqa: E731
    return Validation(values, cat(embeddings), cat(codes), cat(links), cat(lengths), cat(views))


class Collective:
    """What the epoch loop needs from the other ranks; in one process, nothing.

    The Ray engine's DDP subclass all-reduces sums, makes every rank validate rank 0's
    BatchNorm statistics and gathers the validation embeddings for kNN accuracy."""

    all_reduce: AllReduce | None = None

    def sync_buffers(self, model: nn.Module) -> None:
        """Make every rank's buffers (BatchNorm running statistics) rank 0's."""

    def gather(self, *parts: Tensor) -> tuple[Tensor, ...]:
        """Every rank's `parts` (validation embeddings, label codes, ...), each concatenated
        in rank order."""
        return parts


def split_batch(
    batch: CountBatch, fraction: float, generator: torch.Generator | None = None, thin_depths: bool = False
) -> tuple[CountBatch, CountBatch]:
    """Two binomially thinned views of a batch (`split_views` on every k-mer column); GC and
    length are the contig's own in both, and so are its depths unless `thin_depths`
    (`split_depths`: loss.abundance_views=thinned)."""
    views = [split_views(counts, fraction, generator) for counts in (batch.kmer7, batch.kmer4, batch.kmer3)]
    depth_a = depth_b = batch.abundance
    if thin_depths and batch.abundance is not None:
        depth_a, depth_b = split_depths(batch.abundance, batch.length, fraction, generator)
    a = CountBatch(batch.length, batch.gc, *(view[0] for view in views), depth_a)
    b = CountBatch(batch.length, batch.gc, *(view[1] for view in views), depth_b)
    return a, b


def needs_input_statistics(model: nn.Module) -> bool:
    """Whether the model has statistics of its inputs still to fit (a resumed run has its own)."""
    zscore = model.cfg.input_norm == "zscore" and not bool(model.norm_fitted)
    tnf = bool(model.cfg.tnf_readout) and not bool(model.tnf_fitted)
    return zscore or tnf or (model.cfg.uses_abundance and not bool(model.depth_fitted))


def _summed(model: nn.Module, batches: Iterable[CountBatch], parts, *, device: torch.device, all_reduce=None):
    """One pass: the column sums of `parts(transformed batch)` (a list of (B, k) tensors) over all
    contigs, and their number last (float64; every rank's, when `all_reduce` sums across them)."""
    sums = None
    for batch in batches:
        x = model.transform(*batch.to(device, non_blocking=True))
        counted = torch.tensor([float(len(batch.length))], dtype=torch.float64, device=device)
        row = torch.cat([p.double().sum(dim=0) for p in parts(x)] + [counted])
        sums = row if sums is None else sums + row
    if sums is None:
        raise KmervaeError("no training contig to fit the input statistics on")
    if all_reduce is not None:
        all_reduce(sums)
    return sums


@torch.no_grad()
def fit_input_statistics(
    model: nn.Module, batches: Callable[[], Iterable[CountBatch]], *, device: torch.device, all_reduce=None
) -> None:
    """Fit what the model normalises its inputs with, over all training contigs (`batches()` gives
    a whole pass; every rank's, when `all_reduce` sums across ranks): with model.input_norm=zscore
    the mean and standard deviation of every transformed k-mer value; with model.tnf_readout those
    of the readout's TNF; with an abundance branch each sample's mean depth, then, in a second pass
    over the depths scaled by it, the mean and standard deviation of the log total depth (VAMB's
    normalisation needs the scale first)."""
    zscore, tnf, abundance = model.cfg.input_norm == "zscore", bool(model.cfg.tnf_readout), model.cfg.uses_abundance

    def first(x):
        parts = [x.depth] if abundance else []
        if tnf:
            parts = [x.tnf.double(), x.tnf.double().pow(2), *parts]
        if zscore:
            kmers = torch.cat([x.kmer7, x.kmer4, x.kmer3], dim=1).double()  # (B, 8360)
            parts = [kmers, kmers.pow(2), *parts]
        return parts

    sums = _summed(model, batches(), first, device=device, all_reduce=all_reduce)
    n = float(sums[-1])
    width = N7 + N4 + N3 if zscore else 0
    if zscore:
        model.set_input_norm(sums[:width], sums[width : 2 * width], n)
    if tnf:
        start = 2 * width
        model.set_tnf_stats(sums[start : start + N4], sums[start + N4 : start + 2 * N4], n)
    if abundance:
        model.set_depth_scale(sums[-1 - model.cfg.abundance_samples : -1], n)

        def log_depth(x):
            values = model.log_scaled_depth(x.depth.double())
            return [values, values.pow(2)]

        model.set_log_depth_stats(_summed(model, batches(), log_depth, device=device, all_reduce=all_reduce), n)


def keep_first(batches: Iterable[tuple[CountBatch, Tensor | None]], contigs: int, kept: list[CountBatch]):
    """Pass (batch, codes) pairs through, appending the first batches (about `contigs` contigs) to `kept`."""
    count = 0
    for batch, codes in batches:
        if count < contigs:
            kept.append(batch)
            count += len(batch.length)
        yield batch, codes


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, batches: list[CountBatch], *, device: torch.device, precision: str) -> None:
    """BatchNorm running statistics of the current weights: the plain average over `batches` of
    their batch statistics (torch.optim.swa_utils.update_bn). Train-mode forward passes, no update."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    momenta = [m.momentum for m in norms]
    for module in norms:
        module.reset_running_stats()
        module.momentum = None  # a cumulative average
    was_training = model.training
    model.train()
    for batch in batches:
        with autocast(device, precision):
            model(*batch.to(device, non_blocking=True))
    for module, momentum in zip(norms, momenta, strict=True):
        module.momentum = momentum
    model.train(was_training)


def average_batchnorm_over_epoch(model: nn.Module) -> None:
    """Make every BatchNorm layer's running statistics the plain average of the coming epoch's
    batch statistics (momentum None: a cumulative average, as torch.optim.swa_utils.update_bn
    uses). Training itself normalises with batch statistics and is unchanged."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm1d):
            module.reset_running_stats()
            module.momentum = None


EpochHook = Callable[[int, dict[str, float], list[dict[str, float]]], None]
"""Called after each epoch with (epoch, its metrics, the history so far): the engine's own part
(save checkpoints and log locally; report to Ray Train on a worker)."""


def embedding_scores(
    val: Validation, config: RunConfig, labeled: bool, collective: Collective, markers: KeyedMarkers | None = None
) -> dict[str, float]:
    """The epoch's scores of the validation embeddings, gathered from every rank: agreement of
    two views and of must-linked contigs, with labels kNN accuracy, k-means ARI and (with
    train.nc_bins) the near-complete bins of kmervae bin's clusterer, and with the dataset's
    `markers` (train.est_nc_bins) those bins judged by marker genes."""
    tc = config.train
    views, mu, codes, links, lengths = collective.gather(
        val.views if val.views is not None else torch.zeros(0, 2, 0),
        val.embeddings if val.embeddings is not None else torch.zeros(0, 0),
        val.codes if val.codes is not None else torch.zeros(0, dtype=torch.int32),
        val.links if val.links is not None else torch.zeros(0, LINK_COLUMNS, dtype=torch.int64),
        val.lengths if val.lengths is not None else torch.zeros(0, dtype=torch.int64),
    )
    scores = {
        VAL_VIEW_AGREEMENT: view_agreement(views[:, 0], views[:, 1]) if len(views) else math.nan,
        VAL_LINK_AGREEMENT: link_agreement(mu, links) if len(links) == len(mu) > 0 else math.nan,
    }
    whole = config.data.whole_assembly  # bins of kmervae bin's size
    if tc.est_nc_bins and markers is not None:
        scores[VAL_EST_NC_BINS] = estimated_near_complete_bins(
            mu.numpy(),
            lengths.numpy(),
            links[:, 2].numpy() if len(links) == len(mu) else np.zeros(0, dtype=np.int64),
            markers,
            seed=tc.seed,
            min_bin_size=DEFAULT_MIN_BIN_SIZE if whole else 0,
            resolution=tc.bin_resolution,
        )
    if labeled:
        labels = [int(c) if c >= 0 else None for c in codes]
        scores[VAL_KNN_ACC] = knn_accuracy(mu, labels)
        scores[VAL_KMEANS_ARI] = kmeans_ari(mu, labels, seed=tc.seed)
        if tc.nc_bins:
            scores[VAL_NC_BINS] = near_complete_bins(
                mu.numpy(),
                labels,
                lengths.numpy(),
                seed=tc.seed,
                min_bin_size=DEFAULT_MIN_BIN_SIZE if whole else 0,
                resolution=tc.bin_resolution,
            )
    return scores


def run_epochs(
    model: nn.Module,
    data: EpochData,
    config: RunConfig,
    optimizer: torch.optim.Optimizer,
    scheduler: Scheduler,
    *,
    device: torch.device,
    on_epoch: EpochHook,
    start_epoch: int = 0,
    history: list[dict[str, float]] | None = None,
    collective: Collective | None = None,
    markers: KeyedMarkers | None = None,
) -> list[dict[str, float]]:
    """The epoch loop of every engine: beta schedule, train, validate, kNN, scheduler, metrics, hook.

    `model` is what trains (possibly DDP- or compile-wrapped); validation runs the plain model
    (rank 0's weights everywhere) so that no DDP collective runs outside training steps.
    """
    tc = config.train
    collective = collective or Collective()
    history = list(history or [])
    plain = unwrap(model)
    check_labels_for(config, data.labeled)  # the engines check before writing anything; a last guard
    if needs_input_statistics(plain):
        fit_input_statistics(plain, data.all_train_batches, device=device, all_reduce=collective.all_reduce)
    for epoch in range(start_epoch, tc.epochs):
        beta = config.loss.beta_at(epoch)
        if tc.bn_stats == "epoch":
            average_batchnorm_over_epoch(unwrap(model))
        kept: list[CountBatch] = []  # the epoch's first training batches, for bn_stats == "recompute"
        batches = data.train_batches(epoch)
        if tc.bn_stats == "recompute":
            batches = keep_first(batches, tc.bn_contigs, kept)
        train_metrics = train_epoch(
            model, batches, optimizer, config.loss, beta,
            device=device, grad_clip=tc.grad_clip, precision=tc.precision, all_reduce=collective.all_reduce,
        )  # fmt: skip
        if kept:
            recompute_batchnorm(unwrap(model), kept, device=device, precision=tc.precision)
        collective.sync_buffers(unwrap(model))
        val = validate_epoch(
            unwrap(model),
            data.val_batches(),
            config.loss,
            beta,
            device=device,
            precision=tc.precision,
            all_reduce=collective.all_reduce,
            keep_embeddings=True,
            view_contigs=VIEW_CONTIGS,
        )
        val_metrics = {**val.metrics, **embedding_scores(val, config, data.labeled, collective, markers)}
        scheduler.step(val_metrics[VAL_LOSS])
        metrics = {**train_metrics, **val_metrics, LR: optimizer.param_groups[0]["lr"], EPOCH: epoch, BETA: beta}
        history.append(metrics)
        on_epoch(epoch, metrics, history)
    return history


class _CompiledWithFallback(nn.Module):
    """torch.compile'd forward that falls back to eager, once and for all, if compilation fails.

    Compilation happens lazily at the first call, so failures (no C compiler or Triton on a
    bare host) surface there, not at torch.compile().
    """

    def __init__(self, model: nn.Module, log: Callable[[str], None]):
        super().__init__()
        self.module = model
        self._compiled = torch.compile(model)
        self._log = log

    def forward(self, *args, **kwargs):
        if self._compiled is not None:
            try:
                return self._compiled(*args, **kwargs)
            except Exception as err:
                if not is_compile_failure(err):
                    raise  # the model's own error, or out of memory: eager would fail the same way
                first = str(getattr(err, "inner_exception", None) or err).splitlines()[0][:200]
                self._log(f"warning: torch.compile failed ({type(err).__name__}: {first}); running eagerly")
                self._compiled = None
        return self.module(*args, **kwargs)


def is_compile_failure(err: BaseException) -> bool:
    """Whether `err` is torch.compile failing to compile (no C++ compiler or Triton, an
    unsupported construct, a compiler bug), after which the eager model is correct; not an
    error of the model's own code, which compiled code raises as itself, nor running out of
    memory while compiling."""
    from torch._dynamo import exc as dynamo
    from torch._inductor import exc as inductor

    failures = (
        dynamo.BackendCompilerFailed,  # InductorError: the backend failed (InvalidCxxCompiler, ...)
        dynamo.InternalTorchDynamoError,
        dynamo.Unsupported,
        dynamo.InvalidBackend,
        inductor.InductorError,
        inductor.InvalidCxxCompiler,
        inductor.TritonMissing,
        inductor.GPUTooOldForTriton,
    )
    inner = getattr(err, "inner_exception", None) or err.__cause__
    return isinstance(err, failures) and not isinstance(inner, torch.OutOfMemoryError)


def compile_model(model: nn.Module, cfg: TrainConfig, log: Callable[[str], None]) -> nn.Module:
    """torch.compile when asked for, with an eager fallback; the model itself otherwise."""
    return _CompiledWithFallback(model, log) if cfg.compile else model
