"""Fit the `metagenome` preset to your samples: abundance weight, latent size and schedule, several seeds each.

    kmervae markers assembly.fna -o features/markers.tsv          # once: the label-free objective
    python sweeps/sample_count_sweep.py --data features/ --samples 12 --seeds 3 --epochs 10

The preset's settings were chosen with four samples (bench/RESULTS.md "Every set, every seed").
With one or two samples the abundance branch sees less (one sample: only the log of the depth),
so how much its reconstruction weighs against composition (`loss.wab`), how many dimensions the
embedding has (`model.latent_dim`), whether the learning rate anneals (`train.lr_schedule`) and
how much the plain TNF weigh in the embedding beside the latent mean (`model.tnf_readout`, drawn
at any sample count here: the preset's own rule turns it off above two samples) are what to fit
per sample count (issue 38). Everything else stays the preset's.

Ranks like the binning sweep: on the whole assembly's near-complete bins, true (val/nc_bins) with
labels, else estimated by marker genes (val/est_nc_bins). One seed's count can differ from the
next seed's by two or three bins, so run several seeds per setting (`--seeds 3`): settings rank
on their median and no trial is stopped early. See kmervae/distributed/sweep_cli.py for the flags.
"""

from __future__ import annotations

import sys
from pathlib import Path

from kmervae.distributed.sweep_cli import sweep_main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
"""The bundled genomes: the sweep's data when --data is not given."""


def space(trial) -> dict:
    """A log scale for the weight, around the preset's 16. The TNF readout's weight applies as
    drawn whatever the number of samples (the preset's limit of two is lifted)."""
    trial.suggest_float("loss.wab", 2.0, 64.0, log=True)
    trial.suggest_categorical("model.latent_dim", [16, 32, 64])
    trial.suggest_categorical("train.lr_schedule", ["plateau", "cosine"])
    trial.suggest_categorical("model.tnf_readout", [0.0, 0.5, 1.0])
    return {"model.tnf_readout_max_samples": 0}


if __name__ == "__main__":
    sys.exit(
        sweep_main(
            "sample_count_sweep", __doc__.splitlines()[0], space, examples=EXAMPLES, preset="metagenome", metric="bins"
        )
    )
