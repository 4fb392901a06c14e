"""Sweep the loss: per-group weights, beta and its warm-up, gating on or off, the gate BCE weight."""

from __future__ import annotations

import sys
from pathlib import Path

from kmervae.distributed.sweep_cli import sweep_main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
"""The bundled genomes: the sweep's data when --data is not given."""


def space(trial) -> None:
    """Weights on a log scale; the gate BCE weight only exists when gating is on."""
    for group in ("w7", "w4", "w3", "wgc"):
        trial.suggest_float(f"loss.{group}", 0.1, 10.0, log=True)
    trial.suggest_float("loss.beta", 0.01, 2.0, log=True)
    trial.suggest_int("loss.beta_warmup_epochs", 0, 10)
    if trial.suggest_categorical("model.gate_k7", [True, False]):
        trial.suggest_float("loss.gate_bce_weight", 0.1, 10.0, log=True)


if __name__ == "__main__":
    sys.exit(sweep_main("loss_sweep", __doc__.splitlines()[0], space, examples=EXAMPLES, preset="final"))
