"""Sweep branch widths and depths of the three encoder branches and the trunk.

A define-by-run space: each branch's depth decides how many width parameters exist, and
the space returns the width lists it builds from them (the decoder mirrors each branch).
"""

from __future__ import annotations

import sys
from pathlib import Path

from kmervae.distributed.sweep_cli import sweep_main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
"""The bundled genomes: the sweep's data when --data is not given."""

WIDTHS = {
    "kmer7": [128, 256, 512, 1024, 2048],
    "kmer4": [16, 32, 64, 128, 256],
    "kmer3": [8, 16, 32, 64],
    "trunk": [128, 256, 512, 1024],
}


def space(trial) -> dict:
    """Depth 1-3 per branch (1-2 for the trunk), then one width per layer."""
    settings = {}
    for branch, choices in WIDTHS.items():
        depth = trial.suggest_int(f"{branch}_depth", 1, 2 if branch == "trunk" else 3)
        widths = [trial.suggest_categorical(f"{branch}_width_{i}", choices) for i in range(depth)]
        settings[f"model.{branch}_widths"] = widths
    return settings


if __name__ == "__main__":
    sys.exit(sweep_main("architecture_sweep", __doc__.splitlines()[0], space, examples=EXAMPLES, preset="final"))
