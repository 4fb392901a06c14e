"""Metric keys: the names MLflow, Tune, checkpoints and logs share, and which way is better.

A contract (docs/contracts.md): users compare runs by these names in the MLflow UI and
scripts query them, so they never change meaning. Every key is named here once; code
elsewhere uses the names, never the strings. Every epoch reports `EPOCH_KEYS` (gate keys
only for gated models), `ABUNDANCE_KEYS` for models with an abundance branch, `LABELED_KEYS`
when the data has labels, `BIN_KEYS` when binning is asked for (train.nc_bins; labels needed too),
`EST_BIN_KEYS` when binning is judged by marker genes (train.est_nc_bins; no labels needed).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

VALIDATION = "val/"
"""Prefix of the metrics of the validation pass (`EpochMetrics.compute` keys its sums with it)."""

TRAIN_LOSS = "train/loss"
VAL_LOSS = VALIDATION + "loss"
VAL_RECON = VALIDATION + "recon"
VAL_KL = VALIDATION + "kl"
VAL_MSE_7 = VALIDATION + "mse_7"
VAL_MSE_7_PRESENT = VALIDATION + "mse_7_present"
VAL_MSE_7_ABSENT = VALIDATION + "mse_7_absent"
VAL_FRAC_PRESENT = VALIDATION + "frac_present"
VAL_GATE_BCE = VALIDATION + "gate_bce"
VAL_GATE_ACC = VALIDATION + "gate_acc"
VAL_VALUE_MSE = VALIDATION + "value_mse"
VAL_MSE_4 = VALIDATION + "mse_4"
VAL_MSE_3 = VALIDATION + "mse_3"
VAL_MSE_GC = VALIDATION + "mse_gc"
VAL_ACTIVE_UNITS = VALIDATION + "active_units"
VAL_VIEW_AGREEMENT = VALIDATION + "view_agreement"
VAL_LINK_AGREEMENT = VALIDATION + "link_agreement"
VAL_CE_ABUNDANCE = VALIDATION + "ce_abundance"
VAL_MSE_ABUNDANCE = VALIDATION + "mse_abundance"
VAL_KNN_ACC = VALIDATION + "knn_acc"
VAL_KMEANS_ARI = VALIDATION + "kmeans_ari"
VAL_NC_BINS = VALIDATION + "nc_bins"
VAL_EST_NC_BINS = VALIDATION + "est_nc_bins"
"""Near-complete bins estimated from single-copy marker genes (completeness >= 90%, contamination
<= 5%), plus a tie-breaker in [0, 1) (`markers.BinEstimates.score`): the whole part is the count."""
LR = "lr"
EPOCH = "epoch"
"""The epoch's index from 0 (MLflow's step)."""
BETA = "beta"
"""The KL weight of the epoch (after the schedule)."""
SAMPLES_PER_S = "samples_per_s"
DATA_WAIT_S = "data_wait_s"
"""Seconds of the epoch's training pass spent waiting for batches."""
TRAIN_S = "train_s"
"""Seconds of the epoch's training pass."""
EPOCHS_TRAINED = "epochs_trained"
"""A sweep trial's epochs so far, those before a resume included: ASHA's clock. Reported to Tune
only (not an epoch key): Tune's own `training_iteration` starts again at 1 when a resumed sweep
continues a trial from its Ray Train checkpoint, which would give that trial max_t more epochs."""

EPOCH_KEYS = (
    TRAIN_LOSS, VAL_LOSS, VAL_RECON, VAL_KL,
    VAL_MSE_7, VAL_MSE_7_PRESENT, VAL_MSE_7_ABSENT, VAL_FRAC_PRESENT,
    VAL_GATE_BCE, VAL_GATE_ACC, VAL_VALUE_MSE, VAL_MSE_4, VAL_MSE_3, VAL_MSE_GC,
    VAL_ACTIVE_UNITS, VAL_VIEW_AGREEMENT, VAL_LINK_AGREEMENT, LR, EPOCH, BETA,
    SAMPLES_PER_S, DATA_WAIT_S, TRAIN_S,
)  # fmt: skip
GATE_KEYS = (VAL_GATE_BCE, VAL_GATE_ACC, VAL_VALUE_MSE)
"""The keys of `EPOCH_KEYS` that only gated models (model.gate_k7) report."""
ABUNDANCE_KEYS = (VAL_CE_ABUNDANCE, VAL_MSE_ABUNDANCE)
"""Reported by models with an abundance branch (model.abundance_widths): the cross-entropy of the
per-sample depth shares and the squared error of the z-scored log total depth, per contig."""
LABELED_KEYS = (VAL_KNN_ACC, VAL_KMEANS_ARI)
BIN_KEYS = (VAL_NC_BINS,)
EST_BIN_KEYS = (VAL_EST_NC_BINS,)


# What `kmervae bin --mlflow-run` adds to a run (once, at step 0).
BINS = "bins/"
BINS_COUNT = BINS + "count"
BINS_BINNED_BASES = BINS + "binned_bases"
BINS_NEAR_COMPLETE = BINS + "near_complete"
BINS_MEDIUM = BINS + "medium"
BINS_EST_NEAR_COMPLETE = BINS + "est_near_complete"
BINS_EST_MEDIUM = BINS + "est_medium"
BINS_DEREPLICATED_NEAR_COMPLETE = BINS + "dereplicated_near_complete"
"""With --split-by-sample and labels: genomes with a near-complete bin in some sample."""

EVAL = "eval/"
"""What `kmervae evaluate --mlflow-run` adds: `eval_key(embedding, score)`."""


def eval_key(embedding: str, score: str) -> str:
    """The MLflow name of one embedding's score, e.g. eval/vae/knn1_acc or eval/tnf_zscore/nc_bins."""
    return f"{EVAL}{embedding}/{score}"


def epoch_keys(*, gated: bool, abundance: bool, labeled: bool, bins: bool, est_bins: bool = False) -> frozenset[str]:
    """Exactly the keys each epoch of a run reports (the contract above): of a gated model or
    not, with an abundance branch or not, on labelled data or not, binning (train.nc_bins) or not,
    judging bins by marker genes (train.est_nc_bins) or not."""
    keys = set(EPOCH_KEYS) - (set() if gated else set(GATE_KEYS))
    wanted_extra = (
        (abundance, ABUNDANCE_KEYS), (labeled, LABELED_KEYS), (labeled and bins, BIN_KEYS), (est_bins, EST_BIN_KEYS)
    )  # fmt: skip
    for wanted, extra in wanted_extra:
        keys |= set(extra) if wanted else set()
    return frozenset(keys)


MAXIMIZED = frozenset(
    {
        VAL_KNN_ACC, VAL_KMEANS_ARI, VAL_VIEW_AGREEMENT, VAL_LINK_AGREEMENT, VAL_GATE_ACC, VAL_ACTIVE_UNITS,
        VAL_NC_BINS, VAL_EST_NC_BINS,
    }
)  # fmt: skip
"""Metrics where higher is better; every other key (losses, errors) is minimised."""

OBJECTIVES = (
    VAL_LOSS, VAL_KNN_ACC, VAL_KMEANS_ARI, VAL_NC_BINS, VAL_EST_NC_BINS, VAL_LINK_AGREEMENT, VAL_VIEW_AGREEMENT
)  # fmt: skip
"""Keys a sweep may rank trials on (val/link_agreement, val/view_agreement and val/est_nc_bins:
label-free, computed the same way for every trial whatever it varies; val/nc_bins: labels needed,
and a sweep ranking on it turns train.nc_bins on; val/est_nc_bins needs the dataset's marker genes
and turns train.est_nc_bins on)."""


def metric_mode(key: str) -> str:
    """'max' when higher is better for `key`, else 'min' (the one rule sweeps and `kmervae best` use)."""
    return "max" if key in MAXIMIZED else "min"


@dataclass(frozen=True)
class Objective:
    """Which epoch of a run is its best: the one rule for best.pt, the `*` of the epoch table,
    the checkpoint Ray keeps, a trial's score and the sweep's best trial. An epoch whose
    value is missing or not finite is never best."""

    metric: str = VAL_LOSS

    @property
    def mode(self) -> str:
        return metric_mode(self.metric)

    def improves(self, value: float, best: float) -> bool:
        """Whether `value` beats `best` (NaN: nothing yet)."""
        if not math.isfinite(value):
            return False
        return not math.isfinite(best) or (value > best if self.mode == "max" else value < best)

    def best_of(self, items: Iterable[T], value: Callable[[T], float]) -> T | None:
        """The item with the best `value` (the first of equals), or None when none is finite."""
        best, found = math.nan, None
        for item in items:
            if self.improves(value(item), best):
                best, found = value(item), item
        return found

    def best_epoch(self, history: Sequence[Mapping[str, float]]) -> Mapping[str, float] | None:
        """The best epoch's metrics, or None when no epoch has a finite value."""
        return self.best_of(history, lambda metrics: metrics.get(self.metric, math.nan))


LOWEST_VAL_LOSS = Objective(VAL_LOSS)
"""A training run's objective unless a sweep ranks on another metric (its best.pt)."""
