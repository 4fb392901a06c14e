"""Command-line flags shared by `kmervae train` and the sweep scripts, each defined once.

Each helper adds its flags and returns the argparse actions it added (the sweep scripts let
KMERVAE_<FLAG> environment variables set their defaults, so they keep the list).
"""

from __future__ import annotations

import argparse
from pathlib import Path

PRESET_HELP = (
    "preset (architecture and loss settings): final (the seed's), recommended (the best measured on genomes "
    "never seen, bench/RESULTS.md), metagenome (for binning an assembly with read depths: featurize with "
    "--abundance), outline or tiny"
)


def add_settings_flags(p: argparse.ArgumentParser, preset: str, set_help: str) -> list[argparse.Action]:
    """--preset and --set (repeatable section.key=value settings, into `args.overrides`)."""
    return [
        p.add_argument("--preset", default=preset, help=PRESET_HELP),
        p.add_argument(
            "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE", help=set_help
        ),
    ]


def add_tracking_flags(p: argparse.ArgumentParser, experiment: str) -> list[argparse.Action]:
    """--experiment and --mlflow-dir."""
    return [
        p.add_argument("--experiment", default=experiment, help="MLflow experiment"),
        p.add_argument(
            "--mlflow-dir",
            type=Path,
            default=None,
            help="folder of the local MLflow store (default: the current folder; $MLFLOW_TRACKING_URI wins)",
        ),
    ]


def add_cluster_flags(p: argparse.ArgumentParser, verbose_help: str) -> list[argparse.Action]:
    """--address (a Ray cluster) and --verbose (show what Ray prints)."""
    return [
        p.add_argument(
            "--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, else a local cluster)"
        ),
        p.add_argument("--verbose", action="store_true", help=verbose_help),
    ]
