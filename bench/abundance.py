"""`kmervae abundance` against MetaBAT's jgi_summarize_bam_contig_depths on a simulated metagenome.

    python bench/abundance.py build GENOMES... -o DIR [--samples 4] [--seed 1]
    python bench/abundance.py compare DIR
    python bench/abundance.py quality DIR [--epochs 8] [--seeds 0 1 2] [--config NAME ...]

`build` cuts each genome into contigs of log-normal length (median about 4 kb, 1-100 kb, as CAMI
cuts a gold-standard assembly; ids say nothing of the genome), draws each genome's coverage in
each sample from a log-normal (mean about 6x), simulates paired 2x150 Illumina reads with ART
(Debian's art-nextgen-simulation-tools), maps them with minimap2 and sorts them with samtools
(Debian packages: `apt-get install art-nextgen-simulation-tools minimap2 samtools metabat`).
A share of each genome's reads (`--diverged`) comes from a copy with 4% substitutions, so that
some reads fall under the 97% identity cut and the filter is exercised. It writes DIR/assembly.fna,
DIR/truth.tsv (contig, genome, length) and DIR/sample_N.bam.

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
import gzip
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_pipeline.depth_table import read_depth_table  # noqa: E402


def read_genome(path: Path) -> str:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as handle:
        return "".join(line.strip() for line in handle if not line.startswith(">")).upper()


def mutate(seq: str, rate: float, rng: np.random.Generator) -> str:
    data = np.frombuffer(seq.encode(), dtype=np.uint8).copy()
    where = np.flatnonzero(rng.random(len(data)) < rate)
    bases = np.frombuffer(b"ACGT", dtype=np.uint8)
    data[where] = bases[(np.searchsorted(bases, data[where]).clip(0, 3) + rng.integers(1, 4, len(where))) % 4]
    return data.tobytes().decode()


def build(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    genomes = {Path(p).name.split(".")[0]: read_genome(Path(p)) for p in args.genomes}
    contigs, truth = [], []
    for name, seq in genomes.items():
        pos = 0
        while pos < len(seq):
            length = int(np.clip(rng.lognormal(np.log(args.median_length), 0.9), 1000, 100_000))
            piece = seq[pos : pos + length]
            pos += length
            if len(piece) >= args.min_length:
                contigs.append((f"contig_{len(contigs) + 1:06d}", piece))
                truth.append((contigs[-1][0], name, len(piece)))
    order = rng.permutation(len(contigs))  # ids and order say nothing of the genome
    with open(out / "assembly.fna", "w") as fasta, open(out / "truth.tsv", "w") as table:
        table.write("contig\tgenome\tlength\n")
        for new, i in enumerate(order):
            cid = f"contig_{new + 1:06d}"
            fasta.write(f">{cid}\n{contigs[i][1]}\n")
            table.write(f"{cid}\t{truth[i][1]}\t{truth[i][2]}\n")
    coverage = rng.lognormal(np.log(6.0) - 0.5, 1.0, size=(len(genomes), args.samples))
    np.savetxt(out / "coverage.tsv", coverage, delimiter="\t", header="\t".join(genomes), fmt="%.3f")
    work = out / "work"
    work.mkdir(exist_ok=True)
    refs = {}
    for name, seq in genomes.items():
        refs[name] = work / f"{name}.fna"
        refs[name].write_text(f">{name}\n{seq}\n")
        diverged = work / f"{name}.div.fna"
        diverged.write_text(f">{name}_div\n{mutate(seq, 0.04, rng)}\n")
    for s in range(args.samples):
        reads = [work / f"s{s}_1.fq", work / f"s{s}_2.fq"]
        for path in reads:
            path.write_text("")
        for g, name in enumerate(genomes):
            depth = float(coverage[g, s])
            for ref, share in ((refs[name], 1 - args.diverged), (work / f"{name}.div.fna", args.diverged)):
                prefix = work / f"art_{s}_{g}_{ref.stem}"
                seed = str(args.seed * 1000 + s * 50 + g)
                subprocess.run(
                    ["art_illumina", "-ss", "HS25", "-i", str(ref), "-p", "-l", "150", "-f", f"{depth * share:.4f}",
                     "-m", "300", "-s", "30", "-o", str(prefix), "-na", "-q", "-rs", seed],
                    check=True, stdout=subprocess.DEVNULL,
                )  # fmt: skip
                for mate, path in zip(("1", "2"), reads, strict=True):
                    with open(path, "a") as target, open(f"{prefix}{mate}.fq") as part:
                        target.write(part.read())
                    os.remove(f"{prefix}{mate}.fq")
        bam = out / f"sample_{s + 1}.bam"
        mapper = subprocess.Popen(
            ["minimap2", "-t", "2", "-ax", "sr", str(out / "assembly.fna"), *map(str, reads)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        subprocess.run(["samtools", "sort", "-@", "2", "-o", str(bam), "-"], stdin=mapper.stdout, check=True)
        mapper.wait()
        subprocess.run(["samtools", "index", str(bam)], check=True)
        for path in reads:
            path.unlink()
        print(f"sample {s + 1}: {bam}", file=sys.stderr)
    print(f"{len(contigs)} contigs of {len(genomes)} genomes, {args.samples} samples in {out}")


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
    from kmervae.core.engine import fit_local

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
            scores = result["scores"]
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
    b = sub.add_parser("build")
    b.add_argument("genomes", nargs="+")
    b.add_argument("-o", "--out", required=True)
    b.add_argument("--samples", type=int, default=4)
    b.add_argument("--seed", type=int, default=1)
    b.add_argument("--median-length", type=float, default=4000)
    b.add_argument("--min-length", type=int, default=1500)
    b.add_argument("--diverged", type=float, default=0.05)
    b.set_defaults(run=build)
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
