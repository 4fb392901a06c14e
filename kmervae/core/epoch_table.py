"""The per-epoch table the seed's users watched, printed by every engine and kept in MLflow.

Every epoch the original script showed each group's reconstruction error (7-, 4-, 3-mer, GC),
the 7-mer error on present and on absent k-mers, the share of present 7-mers, and the gate's
BCE, accuracy and value error, beside loss, KL and learning rate. `header` and `row` print
that as an aligned table (a header once, a row per epoch, `*` on the best epoch so far);
`table` renders a whole history the same way for the run's `epochs.txt` artifact.
"""

from __future__ import annotations

import math

from kmervae.base.metric_keys import (
    EPOCH,
    LR,
    SAMPLES_PER_S,
    TRAIN_LOSS,
    VAL_CE_ABUNDANCE,
    VAL_EST_NC_BINS,
    VAL_FRAC_PRESENT,
    VAL_GATE_ACC,
    VAL_GATE_BCE,
    VAL_KL,
    VAL_KMEANS_ARI,
    VAL_KNN_ACC,
    VAL_LOSS,
    VAL_MSE_3,
    VAL_MSE_4,
    VAL_MSE_7,
    VAL_MSE_7_ABSENT,
    VAL_MSE_7_PRESENT,
    VAL_MSE_ABUNDANCE,
    VAL_MSE_GC,
    VAL_NC_BINS,
    VAL_VALUE_MSE,
    Objective,
)

COLUMNS = (
    (TRAIN_LOSS, "train_loss"), (VAL_LOSS, "val_loss"), (VAL_KL, "kl"),
    (VAL_MSE_7, "mse_7"), (VAL_MSE_7_PRESENT, "mse_7_pres"), (VAL_MSE_7_ABSENT, "mse_7_abs"),
    (VAL_FRAC_PRESENT, "present"), (VAL_GATE_BCE, "gate_bce"), (VAL_GATE_ACC, "gate_acc"),
    (VAL_VALUE_MSE, "value_mse"), (VAL_MSE_4, "mse_4"), (VAL_MSE_3, "mse_3"), (VAL_MSE_GC, "mse_gc"),
    (VAL_CE_ABUNDANCE, "ce_abund"), (VAL_MSE_ABUNDANCE, "mse_depth"),
    (VAL_KNN_ACC, "knn_acc"), (VAL_KMEANS_ARI, "ari"), (VAL_NC_BINS, "nc_bins"),
    (VAL_EST_NC_BINS, "est_nc"), (LR, "lr"),
    (SAMPLES_PER_S, "samples/s"),
)  # fmt: skip
"""(metric key, heading) in print order; a key the run does not report (gate keys of an
ungated model, label scores of unlabelled data) has no column."""
EPOCHS_FILE = "epochs.txt"
"""The table of a finished run, beside its checkpoints and in its MLflow artifacts."""
WIDTH = 10
EPOCH_WIDTH = 9


def columns(metrics: dict[str, float]) -> list[tuple[str, str]]:
    """The columns of a run whose epochs report `metrics`."""
    return [(key, name) for key, name in COLUMNS if key in metrics]


def _value(key: str, value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    if key == LR:
        return f"{value:.2e}"
    if key == SAMPLES_PER_S:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def header(metrics: dict[str, float]) -> str:
    """The heading line: epoch, then one right-aligned column per reported key."""
    return "epoch".ljust(EPOCH_WIDTH) + "".join(" " + name.rjust(WIDTH) for _, name in columns(metrics))


def row(epoch: int, epochs: int, metrics: dict[str, float], best: bool = False) -> str:
    """One epoch (0-based `epoch` of `epochs`), `*` after the number when it is the best so far."""
    label = f"{epoch + 1}/{epochs}" + (" *" if best else "")
    cells = (" " + _value(key, metrics[key]).rjust(WIDTH) for key, _ in columns(metrics))
    return label.ljust(EPOCH_WIDTH) + "".join(cells)


def table(history: list[dict[str, float]], epochs: int, objective: Objective) -> str:
    """A whole run: header, a row per epoch, `*` on the best epoch by `objective`, and a legend."""
    if not history:
        return ""
    best = objective.best_epoch(history)
    lines = [header(history[0])]
    lines += [row(int(m[EPOCH]), epochs, m, best=m is best) for m in history]
    lines.append(f"* the best epoch by {objective.metric} (its checkpoint is best.pt); {LEGEND}")
    return "\n".join(lines) + "\n"


LEGEND = (
    "mse_7_pres / mse_7_abs: 7-mer error on present / absent k-mers; present: share of present 7-mers; "
    "gate_*: the 7-mer gate's BCE, accuracy and error on the values it keeps"
)


class EpochPrinter:
    """Prints a run's table as it trains: the header before the first row, `*` on each new best
    by the run's objective (as its best checkpoint is chosen)."""

    def __init__(self, epochs: int, objective: Objective):
        self.epochs, self.objective = epochs, objective
        self.best = math.nan
        self.started = False

    def prime(self, history: list[dict[str, float]]) -> None:
        """Take the best so far from the epochs a resumed run already trained (printed then)."""
        for metrics in history:
            self._improves(metrics)

    def _improves(self, metrics: dict[str, float]) -> bool:
        value = metrics.get(self.objective.metric, math.nan)
        better = self.objective.improves(value, self.best)
        if better:
            self.best = value
        return better

    def lines(self, epoch: int, metrics: dict[str, float]) -> list[str]:
        """The lines to print after `epoch`: the header first time, then its row."""
        better = self._improves(metrics)
        out = [] if self.started else [header(metrics)]
        self.started = True
        return out + [row(epoch, self.epochs, metrics, best=better)]
