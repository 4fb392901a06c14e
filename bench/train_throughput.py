"""Training throughput matrix: preset x engine x batch size x precision, on this machine's device.

    .venv/bin/python bench/train_throughput.py [--features DIR] [--presets tiny,final]
        [--batch-sizes 256,1024] [--precisions fp32,bf16] [--epochs 2]

Trains on one feature dataset (default: the ten shared genomes cut into 5 kb contigs,
featurized into a temporary folder) with each engine: `local` (this process, all cores),
`ray-1` and `ray-2` (Ray Train with 1 and 2 CPU workers, or GPU workers where GPUs exist;
data materialized in the object store). Reports the steady-state samples/s (last epoch),
the split of the epoch into data wait and compute, and the wall time including start-up.
Ratios are measured side by side in one run; copy the table into bench/RESULTS.md with the
date, machine and commit.
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

from kmervae.core.config import RunConfig, preset  # noqa: E402
from kmervae.core.run_setup import fit_local  # noqa: E402


def featurize_genomes(genomes: Path, out: Path) -> Path:
    from kmervae.features.featurize import FeaturizeSettings, featurize
    from kmervae.features.labels import Labels

    featurize(
        sorted(genomes.glob("*.fna.gz")),
        out,
        FeaturizeSettings(fragment_length=5000),
        Labels(from_filename=True),
        progress=False,
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=Path)
    parser.add_argument("--genomes", type=Path, default=REPO.parent / "shared" / "genomes")
    parser.add_argument("--presets", default="tiny,final")
    parser.add_argument("--engines", default="local,ray-1,ray-2")
    parser.add_argument("--batch-sizes", default="256,1024")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    with tempfile.TemporaryDirectory(prefix="kmervae-train-bench-") as tmp:
        tmp = Path(tmp)
        features = args.features or featurize_genomes(args.genomes, tmp / "features")
        quiet = lambda line: None  # noqa: E731
        engines = args.engines.split(",")
        ray_start = float("nan")
        if any(e.startswith("ray") for e in engines):
            from kmervae.distributed.ray_engine import fit_ray, init_ray

            started = time.perf_counter()
            init_ray(None)
            ray_start = time.perf_counter() - started
        for name in args.presets.split(","):
            for batch in map(int, args.batch_sizes.split(",")):
                for precision in args.precisions.split(","):
                    config = RunConfig(model=preset(name)).with_overrides(
                        [f"train.epochs={args.epochs}", f"train.batch_size={batch}", f"train.precision={precision}"]
                    )
                    for engine in engines:
                        started = time.perf_counter()
                        if engine == "local":
                            last = fit_local(
                                features, config, tmp / f"local-{name}-{batch}-{precision}", log=quiet
                            ).history[-1]
                        else:
                            workers = int(engine.split("-")[1])
                            last = fit_ray(
                                features,
                                config,
                                workers=workers,
                                use_cpu=device == "cpu",
                                name=f"{name}-{batch}-{precision}-{engine}",
                                storage=tmp / "ray",
                                experiment=None,
                                data_mode="materialize",
                                log=quiet,
                            ).history[-1]
                        rows.append((name, engine, batch, precision, last, time.perf_counter() - started))
                        print(
                            f"{name} {engine} batch {batch} {precision}: {last['samples_per_s']:,.0f} samples/s",
                            file=sys.stderr,
                            flush=True,
                        )
    print(
        f"\ndevice {device}, {len(os.sched_getaffinity(0))} cores, {args.epochs} epochs each; ray.init "
        f"took {ray_start:.1f} s"
    )
    print(
        f"{'preset':<7} {'engine':<6} {'batch':>6} {'prec':<5} {'samples/s':>10} {'vs local':>9} "
        f"{'data wait':>10} {'compute':>8} {'wall':>7}"
    )
    local = {(r[0], r[2], r[3]): r[4]["samples_per_s"] for r in rows if r[1] == "local"}
    for name, engine, batch, precision, last, wall in rows:
        rate = last["samples_per_s"]
        base = local.get((name, batch, precision))
        wait = last["data_wait_s"]
        print(
            f"{name:<7} {engine:<6} {batch:>6} {precision:<5} {rate:>10,.0f} "
            f"{(rate / base if base else float('nan')):>8.0%} "
            f"{wait:>9.2f}s {last['train_s'] - wait:>7.2f}s {wall:>6.0f}s"
        )


if __name__ == "__main__":
    main()
