"""Sweep the latent dimension with the learning rate on the `final` architecture.

The user's main job:
    python sweeps/latent_sweep.py --data features/ --samples 24 --epochs 100
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python sweeps/latent_sweep.py --data /abs/features
Everything else stays as configured (--preset, --set). See kmervae/distributed/sweep_cli.py for the flags.
"""

from __future__ import annotations

import sys
from pathlib import Path

from kmervae.distributed.sweep_cli import sweep_main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
"""The bundled genomes: the sweep's data when --data is not given."""

LATENT_SIZES = [32, 64, 128, 256, 512, 1024]


def space(trial) -> None:
    """Latent size (a choice of powers of two) and learning rate (log scale)."""
    trial.suggest_categorical("model.latent_dim", LATENT_SIZES)
    trial.suggest_float("train.lr", 1e-4, 3e-3, log=True)


if __name__ == "__main__":
    sys.exit(sweep_main("latent_sweep", __doc__.splitlines()[0], space, examples=EXAMPLES, preset="final"))
