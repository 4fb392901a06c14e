"""Sweep the levers of embedding quality on the `final` architecture, ranked on genomes never seen.

    python sweeps/quality_sweep.py --data features/ --samples 32 --epochs 60

Ranks on val/knn_acc (--metric auto) with whole genomes held out (data.val_split=genome, the
default for labelled data), so every trial is scored the same way on genomes it never trained
on. The levers (kmervae/core/config.py documents each): the reconstruction scale, KL control
(beta down to 1e-4, free bits, linear or cyclical annealing), the encoder's input normalisation
(none, z-scores of the training data, centred log-ratio), cross-view training and its split,
an InfoNCE term between the views (plain or debiased), a supervised contrastive term on the training genomes'
labels (such trials are tagged kmervae.uses_labels=true), the 7-mer weight, the latent size,
and regularisation (input dropout, weight decay). On features with abundance ('kmervae featurize
--abundance'), also the abundance branch: its widths (or none), its loss weight and what the
cross-view halves carry of the depths.
See kmervae/distributed/sweep_cli.py for the flags; bench/RESULTS.md ("Levers") for what was measured.
"""

from __future__ import annotations

import sys
from pathlib import Path

from kmervae.distributed.spaces import ABUNDANCE_WIDTHS
from kmervae.distributed.sweep_cli import sweep_main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
"""The bundled genomes: the sweep's data when --data is not given."""


def space(trial) -> None:
    """Log scales for weights and rates; the cyclical period and the view split exist only when used."""
    trial.suggest_categorical("model.latent_dim", [16, 32, 64])
    trial.suggest_categorical("model.input_norm", ["none", "zscore", "clr"])
    trial.suggest_float("model.input_dropout", 0.0, 0.3)
    trial.suggest_float("loss.scale", 1.0, 2090.0, log=True)
    trial.suggest_float("loss.w7", 0.05, 1.0, log=True)
    trial.suggest_float("loss.beta", 1e-4, 1.0, log=True)
    trial.suggest_categorical("loss.free_bits", [0.0, 0.05, 0.2])
    if trial.suggest_categorical("loss.beta_schedule", ["linear", "cyclical"]) == "cyclical":
        trial.suggest_categorical("loss.beta_cycle_epochs", [10, 20])
    else:
        trial.suggest_int("loss.beta_warmup_epochs", 0, 10)
    if trial.suggest_categorical("loss.cross_view", [False, True]):
        trial.suggest_float("loss.view_fraction", 0.3, 0.7)
    infonce = trial.suggest_categorical("loss.infonce", [0.0, 0.1, 1.0])
    supcon = trial.suggest_categorical("loss.supcon", [0.0, 0.1, 1.0])  # trains on labels: tagged as such
    if infonce:
        trial.suggest_categorical("loss.infonce_prior", [0.0, 0.1])  # debiased: a genome's own contigs spared
    if infonce or supcon:
        trial.suggest_float("loss.temperature", 0.05, 0.5, log=True)
    trial.suggest_float("train.weight_decay", 1e-6, 1e-3, log=True)


def space_with_abundance(trial) -> dict:
    """`space`, plus the abundance branch for features with depths."""
    space(trial)
    widths = ABUNDANCE_WIDTHS[trial.suggest_categorical("abundance_branch", list(ABUNDANCE_WIDTHS))]
    if widths:
        trial.suggest_float("loss.wab", 0.1, 10.0, log=True)
        trial.suggest_categorical("loss.abundance_views", ["thinned", "shared"])
    return {"model.abundance_widths": widths}


if __name__ == "__main__":
    sys.exit(
        sweep_main(
            "quality_sweep",
            __doc__.splitlines()[0],
            space,
            examples=EXAMPLES,
            preset="final",
            abundance_space=space_with_abundance,
        )
    )
