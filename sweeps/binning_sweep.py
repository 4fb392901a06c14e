"""Sweep kmervae's settings for binning one metagenome, ranked on the near-complete bins of the whole assembly.

    kmervae abundance sample_*.bam -o depth.tsv
    kmervae featurize assembly.fna --abundance depth.tsv --labels truth.tsv -o features/
    python sweeps/binning_sweep.py --data features/ --samples 24 --epochs 40

A binner trains on the assembly it bins, so every trial does too: the `metagenome` preset
validates on every contig (data.val_split=all), and val/nc_bins (the default objective here)
counts the near-complete bins (recall >= 0.9, purity >= 0.95 by bases, bins of at least 200 kb)
that `kmervae bin`'s clusterer makes of the whole assembly. The labels (a simulated community's
truth table, or genomes a user trusts) only score trials: no loss term reads them. Without labels
(every real assembly) it ranks on val/est_nc_bins: the same bins judged by single-copy marker
genes, as users judge bins with CheckM; the markers are found once per dataset:

    kmervae markers assembly.fna -o features/markers.tsv      # or: kmervae featurize ... --markers

(bench/RESULTS.md "Marker genes" says how well the two objectives agree).

The space: the abundance branch (widths, loss weight), the composition levers (the transform's
pseudo-frequency `model.log_eps`, which decides how far a k-mer a short contig lacks sits from
the rest; the 7-mer weight; the input normalisation), the KL weight, the latent size, the
epochs, and the clusterer's resolution (`train.bin_resolution`, passed on to `kmervae bin
--resolution`). See kmervae/distributed/sweep_cli.py for the flags.
"""

from __future__ import annotations

import sys
from pathlib import Path

from kmervae.distributed.spaces import ABUNDANCE_WIDTHS
from kmervae.distributed.sweep_cli import sweep_main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
"""The bundled genomes: the sweep's data when --data is not given."""


def space(trial) -> dict:
    """Log scales for weights; every trial has an abundance branch (the preset needs depths)."""
    widths = ABUNDANCE_WIDTHS[trial.suggest_categorical("abundance_branch", ["32", "64-32", "128-64"])]
    trial.suggest_float("loss.wab", 1.0, 64.0, log=True)
    trial.suggest_categorical("model.log_eps", [1e-6, 1e-4, 1e-3, 1e-2])
    trial.suggest_categorical("loss.w7", [0.0, 0.1, 1.0])
    trial.suggest_categorical("model.input_norm", ["none", "zscore"])
    trial.suggest_float("loss.beta", 1e-4, 1e-1, log=True)
    trial.suggest_categorical("model.latent_dim", [16, 32, 64])
    trial.suggest_categorical("train.epochs", [10, 20, 40])
    trial.suggest_float("train.bin_resolution", 0.3, 1.0)
    return {"model.abundance_widths": widths}


if __name__ == "__main__":
    sys.exit(
        sweep_main(
            "binning_sweep", __doc__.splitlines()[0], space, examples=EXAMPLES, preset="metagenome", metric="bins"
        )
    )
