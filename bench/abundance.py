"""`kmervae abundance` against MetaBAT's jgi_summarize_bam_contig_depths on a simulated metagenome.

    python bench/metagenome.py build GENOMES... -o DIR [--samples 4] [--seed 1]
    python bench/abundance.py compare DIR
    python bench/abundance.py quality DIR [--epochs 8] [--seeds 0 1 2] [--config NAME ...]

DIR is a simulated metagenome made by `bench/metagenome.py build` (its docstring says how):
DIR/assembly.fna, DIR/truth.tsv and DIR/sample_N.bam.

`compare` runs both tools on the same BAM files with the same cores and prints the time of each,
reads per second, and how many contigs differ by more than 1% and 0.01x (mean and variance).

`quality` featurizes DIR's assembly with the depths `compare` wrote (DIR/kmervae.tsv) and its
truth labels, trains each configuration of `CONFIGS` with the local engine on all contigs (a
binner trains on the assembly it bins) for every seed, embeds the contigs and scores them with
`kmervae evaluate` (near-complete bins by `kmervae bin`'s clusterer, 200 kb minimum), beside the
baselines on the same contigs: z-scored TNF, PCA-32 and TNF with the abundance profile.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kmervae.abundance.depth_table import read_depth_table  # noqa: E402


def compare(args: argparse.Namespace) -> None:
    folder = Path(args.dir)
    bams = sorted(str(p) for p in folder.glob("sample_*.bam"))
    reads = sum(int(subprocess.run(["samtools", "view", "-c", b], capture_output=True, text=True).stdout) for b in bams)
    times = {}
    jgi_command = ["jgi_summarize_bam_contig_depths", "--outputDepth", str(folder / "jgi.tsv"), *bams]
    kmervae = str(Path(sys.executable).parent / "kmervae")
    ours_command = [kmervae, "abundance", *bams, "-o", str(folder / "kmervae.tsv"), "--overwrite"]
    for tool, command in (("jgi_summarize_bam_contig_depths", jgi_command), ("kmervae abundance", ours_command)):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times[tool] = time.perf_counter() - started
    jgi, ours = (list(csv.reader(open(folder / name), delimiter="\t")) for name in ("jgi.tsv", "kmervae.tsv"))
    assert [r[0] for r in jgi] == [r[0] for r in ours], "contig order differs"
    theirs = np.array([[float(v) for v in r[3:]] for r in jgi[1:]])
    mine = np.array([[float(v) for v in r[3:]] for r in ours[1:]])
    diff = np.abs(mine - theirs)
    bad = (diff > 0.01) & (diff > 0.01 * np.abs(theirs))
    means, variances = bad[:, 0::2], bad[:, 1::2]
    table = read_depth_table(folder / "kmervae.tsv")
    print(f"bams {len(bams)}, records {reads:,}, contigs {len(table.contigs):,}, cores {len(os.sched_getaffinity(0))}")
    for tool, seconds in times.items():
        print(f"{tool:<34} {seconds:7.2f} s  {reads / seconds:12,.0f} records/s")
    print(f"contigs with a mean off by > 1% and > 0.01x: {int(means.any(axis=1).sum())} of {len(mine)}")
    print(f"contigs with a variance off by > 1% and > 0.01: {int(variances.any(axis=1).sum())} of {len(mine)}")
    print(f"largest difference of a mean: {diff[:, 0::2].max():.6f}x")


CONFIGS = {
    "composition": [],
    "abundance-shared": ["model.abundance_widths=[64,32]", "loss.abundance_views=shared"],
    "abundance-thinned": ["model.abundance_widths=[64,32]", "loss.abundance_views=thinned"],
}
"""Settings on top of the `recommended` preset, by name."""


def quality(args: argparse.Namespace) -> None:
    import json

    from kmervae.apply.embed import embed
    from kmervae.apply.evaluate import evaluate
    from kmervae.core.config import preset_config
    from kmervae.core.run_setup import fit_local

    folder = Path(args.dir)
    work = folder / "quality"
    features = work / "features"
    kmervae = str(Path(sys.executable).parent / "kmervae")
    subprocess.run(
        [kmervae, "featurize", str(folder / "assembly.fna"), "--abundance", str(folder / "kmervae.tsv"),
         "--labels", str(folder / "truth.tsv"), "--min-length", "1500", "-o", str(features), "--overwrite", "--quiet"],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    rows = {}
    for name in args.config or list(CONFIGS):
        for seed in args.seeds:
            config = preset_config("recommended").with_overrides(
                [*CONFIGS[name], *args.set, f"train.epochs={args.epochs}", f"train.seed={seed}"]
            )
            out = work / f"{name}-{seed}"
            started = time.perf_counter()
            fit = fit_local(features, config, out, log=lambda line: None)
            trained = time.perf_counter() - started
            embed(str(fit.best_checkpoint), features, out / "embeddings.parquet", overwrite=True, progress=False)
            result = evaluate(out / "embeddings.parquet", features, seed=seed)
            (out / "evaluation.json").write_text(json.dumps(result, indent=2))
            scores = result.scores
            rows[(name, seed)] = scores
            vae = scores["vae"]
            print(
                f"| {name} | {seed} | {vae['nc_bins']:.0f} | {vae['mq_bins']:.0f} | {vae['knn1_acc']:.3f} | "
                f"{vae['kmeans_ari']:.3f} | {trained:.0f} s |",
                flush=True,
            )
    baseline = next(iter(rows.values()))
    for name in ("tnf_zscore", "pca32_kmers", "tnf_abundance"):
        b = baseline[name]
        cells = f"{b['nc_bins']:.0f} | {b['mq_bins']:.0f} | {b['knn1_acc']:.3f} | {b['kmeans_ari']:.3f}"
        print(f"| {name} | - | {cells} | - |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(required=True)
    c = sub.add_parser("compare")
    c.add_argument("dir")
    c.set_defaults(run=compare)
    q = sub.add_parser("quality")
    q.add_argument("dir")
    q.add_argument("--epochs", type=int, default=8)
    q.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    q.add_argument("--config", nargs="+", choices=list(CONFIGS))
    q.add_argument("--set", nargs="*", default=[], help="more section.key=value settings for every configuration")
    q.set_defaults(run=quality)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
