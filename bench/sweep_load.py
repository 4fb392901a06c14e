"""Sweep load test: many small trials through Ray Tune, Optuna and MLflow on this machine.

    .venv/bin/python bench/sweep_load.py [--trials 50] [--features DIR]

Runs a sweep of `--trials` trials of the `tiny` preset (2 epochs on 400 contigs each) and
reports: trials per minute; the per-trial overhead of Ray/Optuna/MLflow, i.e. the sweep's
wall time per trial slot minus the same trial trained by the local engine in this process
(measured side by side in the same run); the driver's resident memory at the start, the
end, its peak, and its growth per trial (least squares over the run); and that every trial
appears exactly once in MLflow with each epoch logged once. Prints a table last.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kmervae.core.config import PRESETS, RunConfig, SweepConfig  # noqa: E402
from kmervae.distributed.sweep import run_sweep  # noqa: E402


def space(trial) -> None:
    trial.suggest_float("train.lr", 1e-4, 3e-3, log=True)
    trial.suggest_categorical("model.latent_dim", [4, 8, 16])


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class MemorySampler(threading.Thread):
    """The driver's RSS every `every_s` seconds, with the number of trial folders made so far."""

    def __init__(self, trials_dir: Path, every_s: float = 2.0):
        super().__init__(daemon=True)
        self.trials_dir, self.every_s, self.samples, self.stop = trials_dir, every_s, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            started = len(list(self.trials_dir.glob("trial-*"))) if self.trials_dir.exists() else 0
            self.samples.append((time.time(), started, rss_mib()))
            self.stop.wait(self.every_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--features", type=Path, help="feature dataset (default: the bundled examples, featurized now)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kmervae-sweep-load-"))
    os.chdir(work)  # the MLflow store (mlflow.db) and runs/ go here
    features = args.features
    if features is None:
        from kmervae.features.featurize import FeaturizeSettings, featurize
        from kmervae.features.labels import Labels

        features = work / "features"
        featurize(
            sorted((REPO / "examples").glob("*.fna.gz")),
            features,
            FeaturizeSettings(fragment_length=5000),
            Labels(from_filename=True),
            progress=False,
        )
    base = RunConfig(model=PRESETS["tiny"]).with_overrides(
        ["train.epochs=2", "train.batch_size=64", "data.max_samples=400"]
    )

    # The same trial trained by the local engine in this process: the compute a trial needs.
    from kmervae.core.run_setup import fit_local

    started = time.perf_counter()
    fit_local(features, base, work / "local", log=lambda line: None)
    local_s = time.perf_counter() - started

    rss_start = rss_mib()
    sweep = SweepConfig(
        name="load", storage=str(work / "sweeps"), num_samples=args.trials, grace_period=2, register_as=""
    )
    sampler = MemorySampler(work / "sweeps" / "load" / "trials")
    sampler.start()
    started = time.perf_counter()
    lines: list[str] = []
    result = run_sweep(
        features, base, space, sweep, log=lambda line: (lines.append(line), print(line, file=sys.stderr))
    )
    sweep_s = time.perf_counter() - started
    sampler.stop.set()
    sampler.join()
    rss_end = rss_mib()

    # Every trial exactly once in MLflow, each epoch once.
    from mlflow import MlflowClient

    client = MlflowClient(result.mlflow_uri)
    parent = client.get_run(result.parent_run_id)
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
        max_results=10_000,
    )
    ids = [c.data.tags.get("kmervae.trial_id") for c in children]
    epochs_once = all(
        len(steps) == len(set(steps))
        for steps in ([m.step for m in client.get_metric_history(c.info.run_id, "val/loss")] for c in children)
    )
    ok = sum(1 for row in result.trials if row.status == "OK")

    import re

    concurrency = next(int(m[1]) for line in lines if (m := re.search(r"(\d+) at a time", line)))
    samples = np.array([(t, n, r) for t, n, r in sampler.samples])
    growth = (
        float(np.polyfit(samples[:, 1], samples[:, 2], 1)[0])
        if len(samples) > 2 and np.ptp(samples[:, 1]) > 0
        else float("nan")
    )
    per_slot = sweep_s * concurrency / args.trials
    rows = [
        ("trials (OK / total)", f"{ok} / {len(result.trials)}"),
        ("MLflow child runs / distinct trial ids", f"{len(children)} / {len(set(ids))}"),
        ("every epoch logged once", str(epochs_once)),
        ("sweep wall time", f"{sweep_s:.0f} s"),
        ("trials per minute", f"{args.trials / sweep_s * 60:.2f}"),
        ("concurrent trials", str(concurrency)),
        ("wall time per trial slot", f"{per_slot:.1f} s"),
        ("same trial, local engine in-process", f"{local_s:.1f} s"),
        ("Ray/Optuna/MLflow overhead per trial", f"{per_slot - local_s:.1f} s"),
        ("driver RSS start / end / peak", f"{rss_start:.0f} / {rss_end:.0f} / {samples[:, 2].max():.0f} MiB"),
        ("driver RSS growth per trial (fit)", f"{growth:.2f} MiB"),
    ]
    print()
    for name, value in rows:
        print(f"{name:<40} {value}")


if __name__ == "__main__":
    main()
