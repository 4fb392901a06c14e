"""Training throughput: the local engine and the Ray engine side by side, same data, same run.

    .venv/bin/python bench/train_throughput.py [--features DIR] [--preset final] [--epochs 2]

Trains each engine on the same feature dataset (default: the ten shared genomes cut into
5 kb contigs, featurized into a temporary folder) and reports the steady-state training
samples/s (the last epoch's), the time spent waiting for data, and the wall time including
start-up. The local engine runs twice: with as many torch threads as the Ray worker gets
(the like-for-like comparison) and with all cores. Prints a table last.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kmervae.config import RunConfig, preset  # noqa: E402
from kmervae.engine import fit_local  # noqa: E402


def featurize_genomes(genomes: Path, out: Path) -> Path:
    from data_pipeline.featurize import FeaturizeSettings, featurize
    from data_pipeline.labels import Labels

    featurize(sorted(genomes.glob("*.fna.gz")), out, FeaturizeSettings(fragment_length=5000), Labels(from_filename=True), progress=False)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=Path)
    parser.add_argument("--genomes", type=Path, default=REPO.parent / "shared" / "genomes")
    parser.add_argument("--preset", default="final")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="kmervae-train-bench-") as tmp:
        tmp = Path(tmp)
        features = args.features or featurize_genomes(args.genomes, tmp / "features")
        config = RunConfig(model=preset(args.preset)).with_overrides([f"train.epochs={args.epochs}", f"train.batch_size={args.batch_size}"])
        quiet = lambda line: None  # noqa: E731
        cores = len(os.sched_getaffinity(0))
        for threads in (1, cores):
            torch.set_num_threads(threads)
            started = time.perf_counter()
            local = fit_local(features, config, tmp / f"local{threads}", log=quiet)
            rows.append((f"local, {threads} torch thread(s)", local.history[-1], time.perf_counter() - started))
        torch.set_num_threads(cores)
        import ray

        from kmervae.ray_engine import fit_ray, init_ray

        started = time.perf_counter()
        init_ray(None)
        ray_start = time.perf_counter() - started
        for workers, mode in ((1, "materialize"), (1, "stream"), (2, "materialize")):
            started = time.perf_counter()
            result = fit_ray(
                features, config, workers=workers, use_cpu=True, name=f"w{workers}-{mode}", storage=tmp / "ray",
                experiment=None, data_mode=mode, log=quiet,
            )
            rows.append((f"ray, {workers} CPU worker(s), data {mode}", result.history[-1], time.perf_counter() - started))
        ray.shutdown()
    baseline = rows[0][1]["samples_per_s"]
    print(f"\npreset {args.preset}, batch {args.batch_size}, {args.epochs} epochs; ray.init took {ray_start:.1f} s")
    print(f"{'engine':<40} {'samples/s':>10} {'vs local(1)':>11} {'data wait':>10} {'wall':>8}")
    for name, last, wall in rows:
        rate = last["samples_per_s"]
        print(f"{name:<40} {rate:>10,.0f} {rate / baseline:>10.0%} {last['data_wait_s']:>9.2f}s {wall:>7.1f}s")


if __name__ == "__main__":
    main()
