"""A million contigs: the data, the neighbour-index choice and every step after training, timed.

The contigs are windows of the ten shared genomes, made distinct by mutation, as a deep
assembly's many strains of a few species would be:
- each contig's genome is drawn with probability proportional to its length, its start
  uniformly in that genome (a window never wraps around), its length from a log-normal with a
  median of 2.5 kb, cut to 1.5-50 kb (a metagenome assembly filtered at 1.5 kb: most contigs
  short, a long tail);
- 2% of its bases are substituted by another base, uniformly at random (no two contigs are
  the same sequence; composition stays that of the source genome);
- its id is `c<number>`, its label the genome's name (labels.tsv), so bins can be scored;
- its depth in each of four samples (depth.tsv, VAMB's format): the genome's abundance in that
  sample (log-normal, sigma 1.5, median 10x, drawn once per genome and sample from --seed) times
  a strain factor (log-normal, sigma 0.1), then read-count noise: Poisson reads of 150 bases over
  the contig's length.

    .venv/bin/python bench/million.py contigs --genomes ../shared/genomes --contigs 1000000 --out W/contigs.fna
    python bench/million.py knn --embeddings W/emb.parquet --sample 100000   # in an env with the libraries

`knn` compares the approximate nearest-neighbour libraries on the real contigs' embeddings:
build and query seconds, peak memory and recall of the 15-NN graph against the exact one.
"""

from __future__ import annotations

import argparse
import gzip
import resource
import sys
import time
from pathlib import Path

import numpy as np

NEIGHBOURS = 15
HNSW = {"links": 16, "ef_construction": 100, "ef_search": 48}
"""The HNSW libraries' settings (flags of `knn`)."""
SAMPLES = 4
READ_LENGTH = 150
SUBSTITUTION_RATE = 0.02
MIN_LENGTH, MAX_LENGTH, MEDIAN_LENGTH = 1_500, 50_000, 2_500
BASES = np.frombuffer(b"ACGT", dtype=np.uint8)


def read_genomes(folder: Path) -> dict[str, np.ndarray]:
    """Genome name (the file stem) -> its records joined by N (uppercase bytes)."""
    genomes = {}
    for path in sorted(folder.glob("*.fna.gz")):
        text = gzip.open(path, "rt").read()
        records = ["".join(block.split("\n")[1:]) for block in text.split(">")[1:]]
        genomes[path.name.removesuffix(".fna.gz")] = np.frombuffer("N".join(records).upper().encode(), dtype=np.uint8)
    return genomes


def make_contigs(genomes: dict[str, np.ndarray], count: int, seed: int, out: Path, samples: int = SAMPLES) -> None:
    """Write `count` mutated windows to `out`, their labels and their depths beside it."""
    rng = np.random.default_rng(seed)
    names = list(genomes)
    sizes = np.array([len(genomes[n]) for n in names], dtype=np.float64)
    abundance = 10 * rng.lognormal(0.0, 1.5, size=(len(names), samples))
    stem = out.with_name(out.name.split(".")[0])
    started, bases = time.perf_counter(), 0
    with (
        open(out, "w") as fasta,
        open(f"{stem}.labels.tsv", "w") as labels,
        open(f"{stem}.depth.tsv", "w") as depth,
    ):
        labels.write("contig_id\tlabel\n")
        depth.write("contigname\t" + "\t".join(f"S{s + 1}" for s in range(samples)) + "\n")
        for lo in range(0, count, 10_000):
            n = min(10_000, count - lo)
            which = rng.choice(len(names), size=n, p=sizes / sizes.sum())
            lengths = np.clip(rng.lognormal(np.log(MEDIAN_LENGTH), 0.8, size=n), MIN_LENGTH, MAX_LENGTH).astype(int)
            lengths = np.minimum(lengths, sizes[which].astype(int))
            expected = abundance[which] * rng.lognormal(0.0, 0.1, size=(n, 1)) * lengths[:, None] / READ_LENGTH
            depths = rng.poisson(expected) * READ_LENGTH / lengths[:, None]
            for i, (g, length) in enumerate(zip(which, lengths, strict=True)):
                fasta.write(f">c{lo + i}\n{mutated_window(genomes[names[g]], length, rng)}\n")
                labels.write(f"c{lo + i}\t{names[g]}\n")
                depth.write(f"c{lo + i}\t" + "\t".join(f"{d:.4f}" for d in depths[i]) + "\n")
            bases += int(lengths.sum())
            elapsed = time.perf_counter() - started
            print(f"\r{lo + n:,} contigs, {bases / 1e6:,.0f} Mb, {elapsed:.0f} s", end="", file=sys.stderr)
    print(f"\nwrote {out}, {stem}.labels.tsv and {stem}.depth.tsv", file=sys.stderr)


def mutated_window(genome: np.ndarray, length: int, rng: np.random.Generator) -> str:
    """A window of `length` bases at a random start, SUBSTITUTION_RATE of its bases replaced
    by another base (a shift of 1-3 in ACGT order; an N stays an N)."""
    start = rng.integers(0, len(genome) - length + 1)
    seq = genome[start : start + length].copy()
    hit = np.flatnonzero(rng.random(length) < SUBSTITUTION_RATE)
    acgt = np.searchsorted(BASES, seq[hit])
    known = (acgt < 4) & (BASES[np.minimum(acgt, 3)] == seq[hit])
    seq[hit[known]] = BASES[(acgt[known] + rng.integers(1, 4, size=known.sum())) % 4]
    return seq.tobytes().decode()


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def exact_knn(x: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """The exact k nearest other rows of each query row by cosine (x is unit length)."""
    out = np.empty((len(queries), k), dtype=np.int64)
    for lo in range(0, len(queries), 1024):
        rows = queries[lo : lo + 1024]
        sim = x[rows] @ x.T
        sim[np.arange(len(rows)), rows] = -np.inf
        out[lo : lo + 1024] = np.argpartition(-sim, k, axis=1)[:, :k]
    return out


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    hits = sum(len(set(a) & set(b)) for a, b in zip(found.tolist(), exact.tolist(), strict=True))
    return hits / exact.size


def run_library(name: str, x: np.ndarray, k: int, threads: int) -> tuple[np.ndarray, float, float]:
    """(neighbours without self, build s, query s) of one library at settings for recall >= 0.95."""
    started = time.perf_counter()
    if name == "hnswlib":
        import hnswlib

        index = hnswlib.Index(space="ip", dim=x.shape[1])
        index.init_index(max_elements=len(x), M=HNSW["links"], ef_construction=HNSW["ef_construction"], random_seed=0)
        index.add_items(x, num_threads=threads)
        built = time.perf_counter()
        index.set_ef(max(k + 1, HNSW["ef_search"]))
        labels, _ = index.knn_query(x, k=k + 1, num_threads=threads)
    elif name == "faiss-hnsw":
        import faiss

        faiss.omp_set_num_threads(threads)
        index = faiss.IndexHNSWFlat(x.shape[1], HNSW["links"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW["ef_construction"]
        index.add(x)
        built = time.perf_counter()
        index.hnsw.efSearch = max(k + 1, HNSW["ef_search"])
        _, labels = index.search(x, k + 1)
    elif name == "usearch":
        from usearch.index import Index

        index = Index(
            ndim=x.shape[1],
            metric="ip",
            dtype="f32",
            connectivity=HNSW["links"],
            expansion_add=HNSW["ef_construction"],
            expansion_search=max(k + 1, HNSW["ef_search"]),
        )
        index.add(np.arange(len(x)), x, threads=threads)
        built = time.perf_counter()
        matches = index.search(x, k + 1, threads=threads)
        labels = matches.keys.astype(np.int64)
    elif name == "pynndescent":
        import pynndescent

        index = pynndescent.NNDescent(x, metric="dot", n_neighbors=k + 1, random_state=0, n_jobs=threads)
        built = time.perf_counter()
        labels, _ = index.neighbor_graph
    else:
        raise SystemExit(f"unknown library {name}")
    queried = time.perf_counter()
    # Drop each row's own index (or, where the library missed itself, the last neighbour).
    rows = np.arange(len(x))[:, None]
    own = labels == rows
    neighbours = np.where(own.any(axis=1, keepdims=True), labels, np.concatenate([rows, labels[:, :-1]], axis=1))
    neighbours = np.array([r[r != i][:k] for i, r in enumerate(neighbours)])
    return neighbours, built - started, queried - built


def knn(args: argparse.Namespace) -> None:
    import multiprocessing

    import pyarrow.parquet as pq

    table = pq.read_table(args.embeddings, columns=["embedding"])
    x = np.asarray(table.column("embedding").combine_chunks().flatten(), dtype=np.float32).reshape(table.num_rows, -1)
    del table
    rng = np.random.default_rng(0)
    if args.sample and args.sample < len(x):
        x = x[np.sort(rng.choice(len(x), args.sample, replace=False))]
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    # Recall on a random 10,000 rows' neighbours (exact against every row: cheap at any size).
    queries = np.sort(rng.choice(len(x), min(len(x), 10_000), replace=False))
    exact = exact_knn(x, queries, NEIGHBOURS)
    what = f"{len(x):,} contigs x {x.shape[1]} dimensions; recall on {len(queries):,} rows; HNSW {HNSW}"
    print(what, file=sys.stderr)
    print("| library | build s | query s | recall@15 | same graph on a rerun | process peak RSS MiB |")
    print("|---|---|---|---|---|---|")
    context = multiprocessing.get_context("fork")  # each library in a process of its own: its own peak
    for name in args.libraries:
        with context.Pool(1) as pool:
            row = pool.apply(measure, (name, x, queries, exact, args.threads))
        print(row)
        sys.stdout.flush()


def measure(name: str, x: np.ndarray, queries: np.ndarray, exact: np.ndarray, threads: int) -> str:
    found, build_s, query_s = run_library(name, x, NEIGHBOURS, threads)
    again, _, _ = run_library(name, x, NEIGHBOURS, threads)
    same = float(np.mean(np.sort(found, axis=1) == np.sort(again, axis=1)))
    rss = f"{peak_rss_mib():,.0f}"
    return f"| {name} | {build_s:.1f} | {query_s:.1f} | {recall(found[queries], exact):.4f} | {same:.4f} | {rss} |"


def near_complete(path: Path, ids, raw: np.ndarray, labels, lengths: np.ndarray) -> int:
    """Near-complete bins of one clustering: by bench/metagenome.py's scorer for its sets."""
    from kmervae.binning import bins

    truth = path.parents[3]
    if (truth / "truth.tsv").exists():
        sys.path.insert(0, str(Path(__file__).parent))
        from metagenome import score

        return score({cid: str(code) for cid, code in zip(ids, raw.tolist(), strict=True)}, truth)["near_complete"]
    return bins.bin_quality(bins.renumber(raw, lengths, bins.DEFAULT_MIN_BIN_SIZE), labels, lengths).near_complete


def graphs(args: argparse.Namespace) -> None:
    """Near-complete bins of benchmark embeddings from each graph (exact, HNSW), each Leiden
    implementation (leidenalg, igraph's own) and each resolution: does the faster path bin as
    well, and at which resolution? Embeddings of a bench/metagenome.py set
    (SET/run/*/kmervae-*/emb.parquet) are scored by its scorer against SET/truth.tsv (every contig
    of the assembly), others against their label column. Three clustering seeds: median (range)."""
    import igraph

    from kmervae.apply.embed import read_embeddings
    from kmervae.binning import bins

    def partition(graph: igraph.Graph, how: str, resolution: float, seed: int) -> np.ndarray:
        if how == "igraph":
            return bins.leiden(graph, resolution, seed)
        import leidenalg  # the clusterer before igraph's own (not a dependency: pip install leidenalg)

        found = leidenalg.find_partition(
            graph,
            leidenalg.RBConfigurationVertexPartition,
            weights="weight",
            resolution_parameter=resolution,
            n_iterations=bins.N_ITERATIONS,
            seed=seed,
        )
        return np.asarray(found.membership)

    args.resolutions = args.resolutions or [bins.LEIDEN_RESOLUTION]
    columns = [(g, how, r) for g in args.graphs for how in args.leiden for r in args.resolutions]
    print("| embeddings | contigs | " + " | ".join(f"{g} + {how} {r:g}" for g, how, r in columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    for path in args.embeddings:
        ids, vectors, labels, lengths, _ = read_embeddings(path)
        x = bins.readout(vectors)
        counts = []
        for graph_kind in args.graphs:
            search = bins.exact_neighbours if graph_kind == "exact" else bins.approximate_neighbours
            graph = bins.knn_graph(*search(x, bins.KNN_NEIGHBOURS))
            for how in args.leiden:
                for resolution in args.resolutions:
                    seeds = [
                        near_complete(path, ids, partition(graph, how, resolution, seed), labels, lengths)
                        for seed in range(3)
                    ]
                    counts.append(f"{np.median(seeds):g} ({min(seeds)}-{max(seeds)})")
        print(f"| {path} | {len(x):,} | " + " | ".join(counts) + " |")
        sys.stdout.flush()


def bams(args: argparse.Namespace) -> None:
    """One coordinate-sorted BAM per sample of the contigs' depth table (VAMB format), reads
    placed without an aligner: each contig gets Poisson(depth x length / 150 x `fraction`) exact
    150-base alignments (NM 0, MAPQ 60, no sequence stored), uniformly placed. What `kmervae
    abundance` pays per contig (a million @SQ lines, a million depth rows) shows at any read
    depth; `fraction` keeps the reads (and the time they take) small, and the throughput per
    record is measured on real alignments in "Abundance from BAM files"."""
    import subprocess

    subprocess.run(["samtools", "faidx", str(args.fasta)], check=True)
    lengths = {}
    with open(f"{args.fasta}.fai") as handle:
        for line in handle:
            name, length = line.split("\t")[:2]
            lengths[name] = int(length)
    import pyarrow.csv as pv

    table = pv.read_csv(args.depths, parse_options=pv.ParseOptions(delimiter="\t"))
    samples = table.column_names[1:]
    names = table.column(0).to_pylist()
    depth = np.column_stack([table.column(s).to_numpy() for s in samples])
    size = np.array([lengths[n] for n in names], dtype=np.int64)
    header = "@HD\tVN:1.6\tSO:coordinate\n" + "".join(f"@SQ\tSN:{n}\tLN:{size[i]}\n" for i, n in enumerate(names))
    rng = np.random.default_rng(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    for j, sample in enumerate(samples):
        started = time.perf_counter()
        counts = rng.poisson(depth[:, j] * size / READ_LENGTH * args.fraction)
        contig = np.repeat(np.arange(len(names)), counts)
        start = 1 + (rng.random(len(contig)) * (size[contig] - READ_LENGTH + 1)).astype(np.int64)
        order = np.lexsort((start, contig))
        contig, start = contig[order], start[order]
        bam = args.out / f"{sample}.bam"
        view = subprocess.Popen(["samtools", "view", "-b", "-@", "2", "-o", str(bam), "-"], stdin=subprocess.PIPE)
        view.stdin.write(header.encode())
        for lo in range(0, len(contig), 1_000_000):
            view.stdin.write(
                "".join(
                    f"r{lo + i}\t0\t{names[c]}\t{s}\t60\t150M\t*\t0\t0\t*\t*\tNM:i:0\n"
                    for i, (c, s) in enumerate(
                        zip(contig[lo : lo + 1_000_000].tolist(), start[lo : lo + 1_000_000].tolist(), strict=True)
                    )
                ).encode()
            )
        view.stdin.close()
        if view.wait():
            raise SystemExit(f"samtools view failed for {bam}")
        print(f"{bam}: {len(contig):,} reads ({time.perf_counter() - started:.0f} s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("contigs", help="write the mutated windows and their labels")
    p.add_argument("--genomes", type=Path, required=True)
    p.add_argument("--contigs", type=int, default=1_000_000)
    p.add_argument("--samples", type=int, default=SAMPLES, help="columns of the depth table (and BAM files of `bams`)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("knn", help="approximate neighbour libraries against the exact graph")
    p.add_argument("--embeddings", type=Path, required=True)
    p.add_argument("--sample", type=int, default=100_000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--libraries", nargs="+", default=["hnswlib", "faiss-hnsw", "usearch", "pynndescent"])
    for key, value in HNSW.items():
        p.add_argument(f"--{key.replace('_', '-')}", type=int, default=value, help="HNSW setting")
    p = sub.add_parser("graphs", help="bins from the exact and the HNSW graph, leidenalg and igraph's Leiden")
    p.add_argument("embeddings", type=Path, nargs="+")
    p.add_argument("--graphs", nargs="+", choices=["exact", "hnsw"], default=["exact", "hnsw"])
    p.add_argument("--leiden", nargs="+", choices=["leidenalg", "igraph"], default=["igraph"])
    p.add_argument("--resolutions", type=float, nargs="+", help="default: kmervae bin's")
    p = sub.add_parser("bams", help="one sorted BAM per sample of the depth table, reads placed without an aligner")
    p.add_argument("--fasta", type=Path, required=True)
    p.add_argument("--depths", type=Path, required=True, help="the depth table `contigs` wrote (VAMB format)")
    p.add_argument("--fraction", type=float, default=0.01, help="share of the depth table's reads to write")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "bams":
        return bams(args)
    if args.command == "graphs":
        return graphs(args)
    if args.command == "knn":
        HNSW.update({key: getattr(args, key) for key in HNSW})
    if args.command == "contigs":
        make_contigs(read_genomes(args.genomes), args.contigs, args.seed, args.out, args.samples)
    else:
        knn(args)


if __name__ == "__main__":
    main()
