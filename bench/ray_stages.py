"""Throughput of `featurize --engine ray` and `abundance --engine ray` with 1 and 2 workers.

One local Ray cluster (2 CPUs) is started first and timed on its own; each run then goes
through the same calls as the command (`featurize(..., parts=ray_parts(...))`,
`build_depth_table(..., columns=ray_columns(...))`), so the start-up is not in the rates. The
local engine runs too (abundance with 1 and 2 processes: how far the machine itself scales),
and every Ray output is compared with it byte for byte. `--stages` runs one of the two.

    .venv/bin/python bench/ray_stages.py --fasta W/c200k.fna --bams W/bams/S{1..8}.bam --out W/ray
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path


def timed(what: str, fn, *args, **kwargs) -> float:
    started = time.perf_counter()
    fn(*args, **kwargs)
    seconds = time.perf_counter() - started
    print(f"{what}: {seconds:.1f} s", flush=True)
    return seconds


def same_files(a: Path, b: Path) -> bool:
    if a.is_file():
        return a.read_bytes() == b.read_bytes()
    parts = sorted(p.name for p in a.glob("*.parquet"))
    return parts == sorted(p.name for p in b.glob("*.parquet")) and all(
        (a / n).read_bytes() == (b / n).read_bytes() for n in parts
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fasta", type=Path, required=True)
    parser.add_argument("--bams", type=Path, nargs="+", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--min-length", type=int, default=1500)
    parser.add_argument("--stages", nargs="+", choices=["featurize", "abundance"], default=["featurize", "abundance"])
    args = parser.parse_args()

    import ray

    from kmervae.abundance.bam_depth import DepthSettings
    from kmervae.abundance.build import build_depth_table
    from kmervae.distributed.ray_tasks import ray_columns, ray_parts
    from kmervae.features.featurize import FeaturizeSettings, featurize, load_kernels

    load_kernels()
    args.out.mkdir(parents=True, exist_ok=True)
    settings = FeaturizeSettings(min_length=args.min_length)
    bases = args.fasta.stat().st_size
    rows = []
    timed("ray start", ray.init, address="local", num_cpus=2, logging_level="WARNING")
    local = args.out / "f-local"
    shutil.rmtree(local, ignore_errors=True)
    if "featurize" in args.stages:
        seconds = timed("featurize local (2 threads)", featurize, [args.fasta], local, settings, progress=False)
        rows.append(("featurize", "local, 2 threads", seconds, bases / seconds / 1e6, "-"))
    for workers in (1, 2) if "featurize" in args.stages else ():
        out = args.out / f"f-ray{workers}"
        shutil.rmtree(out, ignore_errors=True)
        parts = ray_parts(None, workers)
        seconds = timed(
            f"featurize ray x{workers}", featurize, [args.fasta], out, settings, progress=False, parts=parts
        )
        rows.append(("featurize", f"ray, {workers} task(s)", seconds, bases / seconds / 1e6, same_files(local, out)))
        shutil.rmtree(out)
    shutil.rmtree(local, ignore_errors=True)

    depth = DepthSettings()
    table = args.out / "a-local.tsv"
    table.unlink(missing_ok=True)
    for workers in (1, 2) if "abundance" in args.stages else ():
        seconds = timed(
            f"abundance local ({workers} process(es))",
            build_depth_table,
            args.bams,
            table,
            depth,
            workers,
            overwrite=True,
        )
        rows.append(("abundance", f"local, {workers} process(es)", seconds, len(args.bams) / seconds, "-"))
    for workers in (1, 2) if "abundance" in args.stages else ():
        out = args.out / f"a-ray{workers}.tsv"
        out.unlink(missing_ok=True)
        columns = ray_columns(None, workers)
        seconds = timed(f"abundance ray x{workers}", build_depth_table, args.bams, out, depth, columns=columns)
        rows.append(("abundance", f"ray, {workers} task(s)", seconds, len(args.bams) / seconds, same_files(table, out)))
        out.unlink()
    table.unlink(missing_ok=True)
    ray.shutdown()
    print("\n| stage | engine | wall | rate (featurize: MB/s of FASTA; abundance: files/s) | same files as local |")
    print("|---|---|---|---|---|")
    for stage, engine, seconds, rate, same in rows:
        print(f"| {stage} | {engine} | {seconds:.1f} s | {rate:.2f} | {same} |")


if __name__ == "__main__":
    main()
