"""Binning benchmark: bins at each quality level for kmervae's model, TNF and VAMB on the same contigs.

Datasets, made from the ten shared genomes (every piece >= 2 kb, VAMB's minimum; ids
RECORD:START-END, labelled with their genome):
- c5k:    non-overlapping 5 kb contigs;
- c2k:    non-overlapping 2 kb contigs;
- varied: consecutive contigs of random length, uniform in 2-50 kb (seeded), like an assembly.

For each dataset: the `recommended` preset trained on all its contigs with the local engine
(binning is unsupervised: a binner trains on the assembly it bins, as VAMB does), its
embeddings; z-scored TNF and PCA-32 of all k-mer log-frequencies of the same contigs; all binned
with kmervae's default clusterer (`kmervae.binning.bins.cluster`, also `--method hdbscan`); VAMB 5
`bin default` with a
constant abundance (one sample, every contig 1.0: composition only) when --vamb-python names
an interpreter with VAMB. Every bin set is scored by `kmervae.binning.bins.bin_quality` with the
same minimum bin size (200 kb), so the counts are comparable.

    .venv/bin/python bench/binning.py quality --genomes ../shared/genomes --work DIR [--vamb-python PY]
    .venv/bin/python bench/binning.py grid --work DIR      # how the Leiden defaults were chosen
    .venv/bin/python bench/binning.py speed --work DIR     # seconds to bin 10k, 30k, 100k contigs

Prints markdown tables; copy them into bench/RESULTS.md with the date, machine and commit.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kmervae.apply.embed import embed, read_embeddings  # noqa: E402
from kmervae.apply.evaluate import baselines  # noqa: E402
from kmervae.base.feature_table import FeatureTable  # noqa: E402
from kmervae.binning import bins  # noqa: E402
from kmervae.features.fasta import FastaReader, file_stem  # noqa: E402
from kmervae.features.featurize import FeaturizeSettings, featurize  # noqa: E402
from kmervae.features.labels import Labels  # noqa: E402

MIN_CONTIG = 2000
EPOCHS = {"c5k": 8, "c2k": 4, "varied": 8}
"""Training epochs per dataset (CPU time; c2k holds 2.5x the contigs of c5k)."""
TRAIN_FRAGMENT = {"varied": 5000}
"""Datasets whose model trains on their contigs cut into fragments of this length (and then
embeds the whole contigs): 1,070 contigs are too few steps to train on (2 near-complete bins
against 7-8 when trained on the same bases as 5 kb fragments; bench/RESULTS.md "Binning")."""


def cut(length: int, dataset: str, rng: np.random.Generator) -> list[tuple[int, int]]:
    """[start, end) pieces of a record: fixed 5 kb / 2 kb, or random 2-50 kb; pieces < 2 kb dropped."""
    bounds, start = [], 0
    while start < length:
        size = {"c5k": 5000, "c2k": 2000}.get(dataset) or int(rng.integers(2000, 50_001))
        end = min(start + size, length)
        if end - start >= MIN_CONTIG:
            bounds.append((start, end))
        start = end
    return bounds


def prepare(genomes: Path, work: Path, dataset: str) -> Path:
    """contigs.fna, labels.tsv and features/ of one dataset (made once)."""
    folder = work / dataset
    if (folder / "features").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20261127)
    with open(folder / "contigs.fna", "w") as fasta, open(folder / "labels.tsv", "w") as labels:
        for path in sorted(genomes.glob("*.fna.gz")):
            for record in FastaReader(path):
                sequence = record.sequence.tobytes().decode()
                for start, end in cut(len(sequence), dataset, rng):
                    cid = f"{record.id}:{start + 1}-{end}"
                    fasta.write(f">{cid}\n{sequence[start:end]}\n")
                    labels.write(f"{cid}\t{file_stem(path)}\n")
    featurize(
        [folder / "contigs.fna"],
        folder / "features",
        FeaturizeSettings(min_length=MIN_CONTIG),
        Labels.from_tsv(folder / "labels.tsv"),
        progress=False,
    )
    return folder


def train_and_embed(folder: Path, epochs: int, overrides: list[str]) -> Path:
    """The `recommended` preset (with `overrides`) trained on every contig of the dataset (or on
    them cut into fragments, TRAIN_FRAGMENT); the embeddings of the dataset's contigs."""
    tag = "-".join(o.replace("=", "") for o in overrides)
    out = folder / f"embeddings{'-' + tag if tag else ''}.parquet"
    if out.exists():
        return out
    model = folder / f"model{'-' + tag if tag else ''}"
    started = time.perf_counter()
    training = folder / "features"
    if folder.name in TRAIN_FRAGMENT:
        training = folder / f"features-{TRAIN_FRAGMENT[folder.name]}"
        if not training.exists():
            settings = FeaturizeSettings(fragment_length=TRAIN_FRAGMENT[folder.name], min_length=MIN_CONTIG)
            featurize(
                [folder / "contigs.fna"], training, settings, Labels.from_tsv(folder / "labels.tsv"), progress=False
            )
    subprocess.run(
        [sys.executable, "-m", "kmervae.cli", "train", str(training), "--engine", "local",
         "--preset", "recommended", "--epochs", str(epochs), "--no-mlflow", "--out", str(model),
         *(a for o in overrides for a in ("--set", o))],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    print(f"# {folder.name}: trained {epochs} epochs in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    embed(str(model / "last.pt"), folder / "features", out, progress=False)
    return out


def vamb_bins(folder: Path, python: str, ids: np.ndarray) -> tuple[np.ndarray, float] | str:
    """VAMB 5 composition only (a constant one-sample abundance): its raw clusters in `ids` order."""
    out = folder / "vamb"
    if not (out / "vae_clusters_unsplit.tsv").exists():
        abundance = folder / "abundance.tsv"
        abundance.write_text("contigname\tconstant\n" + "".join(f"{cid}\t1.0\n" for cid in ids))
        started = time.perf_counter()
        run = subprocess.run(
            [python, "-m", "vamb", "bin", "default", "--outdir", str(out), "--fasta", str(folder / "contigs.fna"),
             "--abundance_tsv", str(abundance), "-m", str(MIN_CONTIG), "-p", "2", "--seed", "0", "-o", ""],
            capture_output=True, text=True,
        )  # fmt: skip
        if run.returncode != 0:
            return f"VAMB failed: {run.stderr.strip().splitlines()[-1][:200] if run.stderr.strip() else run.returncode}"
        (out / "seconds").write_text(f"{time.perf_counter() - started:.1f}")
    names = {}
    for line in (out / "vae_clusters_unsplit.tsv").read_text().splitlines()[1:]:
        cluster, contig = line.split("\t")
        names[contig] = cluster
    clusters = {name: i for i, name in enumerate(sorted(set(names.values())))}
    raw = np.array([clusters[names[cid]] if cid in names else -1 for cid in ids], dtype=np.int64)
    return raw, float((out / "seconds").read_text())


def row(dataset: str, name: str, codes: np.ndarray, labels, lengths, seconds: float) -> str:
    q = bins.bin_quality(codes, labels, lengths)
    grid = q.grid()
    cells = [grid[f"recall>={r},purity>=0.95"] for r in bins.RECALLS]
    share = lengths[codes >= 0].sum() / lengths.sum()
    return (
        f"| {dataset} | {name} | {len(q.main)} | {share:.3f} | "
        + " | ".join(map(str, cells))
        + f" | **{q.near_complete}** | {q.count(*bins.MEDIUM)} | {seconds:.1f} |"
    )


def quality(args: argparse.Namespace) -> None:
    print(
        "| contigs | embedding + clusterer | bins | binned share | "
        + " | ".join(f"r>={r}" for r in bins.RECALLS)
        + " (purity >= 0.95) | near-complete | medium (r>=0.5, p>=0.9) | seconds |"
    )
    print("|" + "---|" * (7 + len(bins.RECALLS)))
    for dataset in args.datasets:
        folder = prepare(args.genomes, args.work, dataset)
        table = FeatureTable.from_parquet(folder / "features")
        ids = np.asarray(table.contig_ids, dtype=object)
        labels, lengths = np.asarray(table.labels, dtype=object), table.length.astype(np.int64)
        data = read_embeddings(train_and_embed(folder, EPOCHS[dataset], args.set))
        position = {cid: i for i, cid in enumerate(data.ids)}
        embeddings = {
            f"kmervae `recommended`{' ' + ' '.join(args.set) if args.set else ''}": data.vectors[
                [position[cid] for cid in ids]
            ],
        }
        linear = baselines(folder / "features", ids, 32)
        embeddings |= {"TNF z-scored": linear["tnf_zscore"], "PCA-32 of all k-mers": linear["pca32_kmers"]}
        print(f"# {dataset}: {len(ids):,} contigs, {int(lengths.sum()):,} bases", file=sys.stderr)
        for method in args.methods:
            for name, x in embeddings.items():
                started = time.perf_counter()
                codes = bins.cluster(x, lengths, method)
                print(row(dataset, f"{name} + {method}", codes, labels, lengths, time.perf_counter() - started))
        if args.vamb_python:
            got = vamb_bins(folder, args.vamb_python, ids)
            if isinstance(got, str):
                print(f"| {dataset} | VAMB | {got} |")
            else:
                raw, seconds = got
                codes = bins.renumber(raw, lengths, bins.DEFAULT_MIN_BIN_SIZE)
                print(row(dataset, "VAMB 5 composition only (own clusterer)", codes, labels, lengths, seconds))
        sys.stdout.flush()


def grid(args: argparse.Namespace) -> None:
    """How the Leiden defaults were chosen: near-complete bins (mean of 3 seeds) for every
    (neighbours, resolution) on each dataset's model and TNF embeddings, and the number of
    bins two genomes far apart in GC (S. aureus, M. tuberculosis; 20 kb contigs, TNF) get."""
    cases = {}
    for dataset in args.datasets:
        folder = prepare(args.genomes, args.work, dataset)
        table = FeatureTable.from_parquet(folder / "features")
        ids = np.asarray(table.contig_ids, dtype=object)
        data = read_embeddings(train_and_embed(folder, EPOCHS[dataset], args.set))
        position = {cid: i for i, cid in enumerate(data.ids)}
        labels, lengths = np.asarray(table.labels, dtype=object), table.length.astype(np.int64)
        cases[f"{dataset} model"] = (data.vectors[[position[c] for c in ids]], labels, lengths)
        cases[f"{dataset} TNF"] = (baselines(folder / "features", ids, 32)["tnf_zscore"], labels, lengths)
    two = args.work / "two-genomes"
    if not (two / "features").exists():
        two.mkdir(parents=True, exist_ok=True)
        paths = [
            args.genomes / f"{name}.fna.gz"
            for name in ("Staphylococcus_aureus_N315", "Mycobacterium_tuberculosis_H37Rv")
        ]
        featurize(
            paths,
            two / "features",
            FeaturizeSettings(fragment_length=20_000),
            Labels(from_filename=True),
            progress=False,
        )
    table = FeatureTable.from_parquet(two / "features")
    ids = np.asarray(table.contig_ids, dtype=object)
    pair = (baselines(two / "features", ids, 8)["tnf_zscore"], table.length.astype(np.int64))
    print("| neighbours | resolution | " + " | ".join(cases) + " | total | two genomes: bins |")
    print("|" + "---|" * (len(cases) + 4))
    for neighbours in (10, 15, 30):
        for resolution in (0.3, 0.5, 0.7, 1.0):
            cells = []
            for x, labels, lengths in cases.values():
                counts = [
                    bins.bin_quality(
                        bins.cluster(x, lengths, seed=seed, neighbours=neighbours, resolution=resolution),
                        labels,
                        lengths,
                    ).near_complete
                    for seed in range(3)
                ]
                cells.append(float(np.mean(counts)))
            split = int(bins.cluster(*pair, neighbours=neighbours, resolution=resolution).max()) + 1
            row = " | ".join(f"{c:.1f}" for c in cells)
            print(f"| {neighbours} | {resolution} | {row} | {sum(cells):.1f} | {split} |", flush=True)


def speed(args: argparse.Namespace) -> None:
    """Seconds of `bins.cluster` (default method) on the readout of a trained model for 10k-100k
    real contigs: 2 kb windows at random places of the ten genomes, embedded by the c2k model."""
    folder = args.work / "speed"
    model = args.work / "c2k" / "model" / "last.pt"
    if not model.exists():
        sys.exit(f"{model}: run 'quality' with c2k first (its model embeds the windows)")
    if not (folder / "embeddings.parquet").exists():
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        records = [
            (r.id, r.sequence.tobytes().decode())
            for p in sorted(args.genomes.glob("*.fna.gz"))
            for r in FastaReader(p)
            if len(r.sequence) >= MIN_CONTIG  # every window a whole 2 kb
        ]
        weights = np.array([len(s) for _, s in records], dtype=np.float64)
        with open(folder / "windows.fna", "w") as fasta:
            for i, k in enumerate(rng.choice(len(records), max(args.sizes), p=weights / weights.sum())):
                rid, sequence = records[k]
                start = int(rng.integers(0, max(1, len(sequence) - 2000)))
                fasta.write(f">w{i}|{rid}:{start + 1}-{start + 2000}\n{sequence[start : start + 2000]}\n")
        featurize(
            [folder / "windows.fna"], folder / "features", FeaturizeSettings(min_length=MIN_CONTIG), progress=False
        )
        embed(str(model), folder / "features", folder / "embeddings.parquet", progress=False)
    data = read_embeddings(folder / "embeddings.parquet")
    if len(data.ids) < max(args.sizes):
        sys.exit(f"{folder}: holds {len(data.ids):,} windows, fewer than {max(args.sizes):,}; remove it and run again")
    print("| contigs | seconds (kNN graph + Leiden + renumbering) | bins |")
    print("|---|---|---|")
    for n in sorted(args.sizes):
        started = time.perf_counter()
        codes = bins.cluster(data.vectors[:n], data.lengths[:n])
        print(f"| {n:,} | {time.perf_counter() - started:.1f} | {int(codes.max()) + 1} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["quality", "grid", "speed"])
    parser.add_argument("--genomes", type=Path, default=REPO.parent / "shared" / "genomes")
    parser.add_argument("--work", type=Path, required=True, help="folder for datasets, models and VAMB runs (reused)")
    parser.add_argument("--datasets", nargs="+", default=["c5k", "c2k", "varied"], choices=["c5k", "c2k", "varied"])
    parser.add_argument("--methods", nargs="+", default=[bins.DEFAULT_METHOD], choices=bins.METHODS)
    parser.add_argument("--vamb-python", help="a Python interpreter with VAMB 5 installed")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    parser.add_argument("--set", action="append", default=[], help="a setting on top of `recommended` (repeatable)")
    args = parser.parse_args()
    {"quality": quality, "grid": grid, "speed": speed}[args.mode](args)


if __name__ == "__main__":
    main()
