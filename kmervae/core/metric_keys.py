"""Metric keys: the names MLflow, Tune, checkpoints and logs share, and which way is better.

A contract (docs/contracts.md): users compare runs by these names in the MLflow UI and
scripts query them, so they never change meaning. Every epoch reports `EPOCH_KEYS`
(gate keys only for gated models), `ABUNDANCE_KEYS` for models with an abundance branch,
`LABELED_KEYS` when the data has labels, `BIN_KEYS` when
binning is asked for (train.nc_bins; labels needed too).
"""

from __future__ import annotations

EPOCH_KEYS = (
    "train/loss", "val/loss", "val/recon", "val/kl",
    "val/mse_7", "val/mse_7_present", "val/mse_7_absent", "val/frac_present",
    "val/gate_bce", "val/gate_acc", "val/value_mse", "val/mse_4", "val/mse_3", "val/mse_gc",
    "val/active_units", "val/view_agreement", "val/link_agreement", "lr", "epoch", "samples_per_s",
)  # fmt: skip
ABUNDANCE_KEYS = ("val/ce_abundance", "val/mse_abundance")
"""Reported by models with an abundance branch (model.abundance_widths): the cross-entropy of the
per-sample depth shares and the squared error of the z-scored log total depth, per contig."""
LABELED_KEYS = ("val/knn_acc", "val/kmeans_ari")
BIN_KEYS = ("val/nc_bins",)

MAXIMIZED = frozenset(
    {
        "val/knn_acc",
        "val/kmeans_ari",
        "val/view_agreement",
        "val/link_agreement",
        "val/gate_acc",
        "val/active_units",
        "val/nc_bins",
    }  # fmt: skip
)
"""Metrics where higher is better; every other key (losses, errors) is minimised."""

OBJECTIVES = (
    "val/loss", "val/knn_acc", "val/kmeans_ari", "val/nc_bins", "val/link_agreement", "val/view_agreement",
)  # fmt: skip
"""Keys a sweep may rank trials on (val/link_agreement and val/view_agreement: label-free,
computed the same way for every trial whatever it varies; val/nc_bins: labels needed, and a
sweep ranking on it turns train.nc_bins on)."""


def metric_mode(key: str) -> str:
    """'max' when higher is better for `key`, else 'min' (the one rule sweeps and `kmervae best` use)."""
    return "max" if key in MAXIMIZED else "min"
