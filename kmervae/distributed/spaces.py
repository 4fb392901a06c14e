"""Pieces that several sweep scripts' search spaces share (the scripts are in `sweeps/`).

Optuna's categories must be plain values, so a choice of network shape is drawn by name and
looked up here.
"""

from __future__ import annotations

ABUNDANCE_WIDTHS: dict[str, list[int]] = {"none": [], "32": [32], "64-32": [64, 32], "128-64": [128, 64]}
"""Abundance branches the sweeps try, by name: `model.abundance_widths` of each."""
