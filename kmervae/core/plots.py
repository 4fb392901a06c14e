"""Training curves as a PNG for MLflow: losses, per-group reconstruction errors, KL and kNN."""

from __future__ import annotations

from pathlib import Path

from kmervae.base.metric_keys import (
    EPOCH,
    TRAIN_LOSS,
    VAL_ACTIVE_UNITS,
    VAL_KL,
    VAL_KNN_ACC,
    VAL_LOSS,
    VAL_MSE_3,
    VAL_MSE_4,
    VAL_MSE_7,
    VAL_MSE_7_ABSENT,
    VAL_MSE_7_PRESENT,
    VAL_MSE_GC,
    VAL_RECON,
    VAL_VALUE_MSE,
)

LOG_SPAN = 20.0
"""Values whose largest is more than this many times their smallest (all positive) get a log axis."""


def spans_orders(values) -> bool:
    """Whether `values` (ignoring NaN and infinities) are positive and span orders of magnitude."""
    finite = [v for v in values if v == v and abs(v) != float("inf")]
    return bool(finite) and min(finite) > 0 and max(finite) / min(finite) > LOG_SPAN


def plot_training_curves(history: list[dict[str, float]], path: str | Path) -> Path:
    """Three panels over epochs: train/val loss; val MSE per feature group; KL, active units, kNN."""
    from matplotlib.figure import Figure  # no pyplot: nothing process-wide (backend, figure registry) changes

    epochs = [int(m[EPOCH]) + 1 for m in history]

    def series(key: str) -> list[float] | None:
        values = [m.get(key) for m in history]
        return None if all(v is None for v in values) else [float("nan") if v is None else v for v in values]

    fig = Figure(figsize=(15, 4))
    axes = fig.subplots(1, 3)
    for key in (TRAIN_LOSS, VAL_LOSS, VAL_RECON):
        if (values := series(key)) is not None:
            axes[0].plot(epochs, values, label=key, marker=".")
    axes[0].set_title("loss")
    for key in (
        VAL_MSE_7,
        VAL_MSE_7_PRESENT,
        VAL_MSE_7_ABSENT,
        VAL_MSE_4,
        VAL_MSE_3,
        VAL_MSE_GC,
        VAL_VALUE_MSE,
    ):
        if (values := series(key)) is not None:
            axes[1].plot(epochs, values, label=key, marker=".")
    axes[1].set_title("validation MSE per feature group")
    for ax in axes[:2]:
        ax.set_yscale("log")
    kl = series(VAL_KL)
    if kl is not None:
        axes[2].plot(epochs, kl, label=VAL_KL, color="tab:red", marker=".")
        if spans_orders(kl):  # early epochs' KL can be 100x the last
            axes[2].set_yscale("log")
    axes[2].set_title("KL, active units, kNN accuracy")
    twin = axes[2].twinx()
    for key, color in ((VAL_ACTIVE_UNITS, "tab:gray"), (VAL_KNN_ACC, "tab:green")):
        if (values := series(key)) is not None:
            scale = 1.0 if key == VAL_KNN_ACC else 1.0 / max(max(values), 1.0)
            twin.plot(
                epochs,
                [v * scale for v in values],
                label=f"{key}{'' if scale == 1.0 else ' (/max)'}",
                color=color,
                marker=".",
            )
    twin.set_ylim(0, 1.05)
    for ax in (*axes, twin):
        ax.set_xlabel("epoch")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path
