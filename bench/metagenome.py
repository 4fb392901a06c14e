"""A metagenome benchmark: a simulated gold-standard assembly with reads of several samples, and
every binner on it side by side, scored by one scorer (issue 26).

    python bench/metagenome.py build GENOMES... -o DIR [--samples 4] [--seed 1] [--median-length 4000]
    python bench/metagenome.py run DIR [--binners kmervae baseline metabat vamb semibin] [--samples N]
                                       [--preset metagenome] [--epochs E] [--seeds 0 1 2]
                                       [--set section.key=value ...] [--tag NAME] [--ensemble N] [--reuse]
                                       [--recluster METHOD]
                                       [--vamb BIN] [--semibin BIN]

`build` cuts each genome into consecutive contigs of log-normal length (median `--median-length`,
1-100 kb, as CAMI cuts a gold-standard assembly; contigs under `--min-length` dropped), gives
them ids that say nothing of the genome in a shuffled order, and writes DIR/assembly.fna and
DIR/truth.tsv (contig, genome, length, record, position). Each genome's coverage in each sample
is drawn from a log-normal (mean about 6x; some genomes near 1x in some samples), paired 2x150
Illumina reads are simulated with ART (a share `--diverged` of them from a copy with 4%
substitutions, so the 97% identity cut matters), mapped with minimap2 and sorted and indexed
with samtools: DIR/sample_N.bam. Deterministic for a seed. Tools: Debian's
`art-nextgen-simulation-tools minimap2 samtools metabat` (`apt-get install ...`).

`run` bins DIR's assembly with each binner, each in its own environment (none is a dependency of
kmervae), and scores every result with kmervae's scorer (`kmervae.binning.bins.bin_quality`:
AMBER's definitions by bases, bins of at least 200 kb; contigs a tool leaves out count as
unbinned): near-complete (recall >= 0.9, purity >= 0.95) and medium (>= 0.5, >= 0.9) bins, the
binned share of bases, wall time and peak memory. `--samples N` bins with the first N samples'
BAM files only (the 2- and 1-sample sets: the same contigs, fewer samples); outputs go to
DIR/run/<N>s/<binner>. Binners:
- kmervae: `kmervae abundance` on the BAMs and `featurize --abundance` (once per set, shared with
  the baseline, not timed), then for each training seed (`--seeds`, median and range printed)
  `train --engine local` (`--preset`, default `metagenome`, `--set` on top), `embed`, `bin` with
  the set's marker genes (DIR/markers.tsv, made once by `kmervae markers`) and its default
  reclustering by them (`--recluster` picks another);
- baseline: z-scored TNF beside the abundance profile (`kmervae.apply.evaluate`), clustered by
  `kmervae bin`'s clusterer once per seed of `--seeds` (the clusterer's seed: the baseline's one
  source of chance; Leiden's count moves by up to two bins with it), reclustered by the set's
  markers as `kmervae bin` reclusters kmervae's;
- metabat: MetaBAT2 (Debian's `metabat`) on `jgi_summarize_bam_contig_depths`' table, defaults
  (minimum contig 2,500 bp);
- vamb: VAMB 5.0.4 `vamb bin default` with the BAM files (its own pycoverm depths), defaults;
  environment: `python3 -m venv ENV && ENV/bin/pip install vamb==5.0.4` (it pins torch 2.6.0,
  which PyPI serves as a CUDA build: several GB), then `--vamb ENV/bin/vamb`;
- semibin: SemiBin2 2.6 `single_easy_bin` with the BAM files: with one sample its pretrained
  `global` model (its documented way to skip training, which takes minutes an epoch on a CPU);
  with several it trains (`--semibin-epochs`, its default 15; the pretrained models refuse
  multi-sample coverage); environment:
  `python3 -m venv ENV && ENV/bin/pip install torch==2.13.0 semibin==2.6.0` (the CPU build of
  torch) and Debian's `bedtools hmmer`, which it calls; then `--semibin ENV/bin/SemiBin2`.

`--ensemble 3` also bins every three consecutive seeds' embeddings together (`kmervae bin A B C`:
seeds 0 1 2, 3 4 5, ...); `--reuse` bins a seed embedded by an earlier run again instead of
retraining it. With kmervae and the baseline both run, the last lines are the gate (issue 38):
kmervae's median near-complete bins minus the baseline's median over its clusterer seeds, and the
range of every run's difference with every baseline run (and the same for the ensembles). A trained
model that does not beat the untrained baseline on its own clusterer has not earned its training.

Each binner's contig -> bin table is kept as DIR/run/<N>s/<binner>/assignment.tsv, which
`bench/markers.py validate` judges by marker genes against the truth.

The strain-rich set (issue 37): the ten shared genomes plus nine strains of their species and of
one more, from Debian's example data (`apt-get install ragout-examples kleborate-examples`):
S. aureus COL and USA300_FPR3757, E. coli DH1, H. pylori SJM180 and Puno120, V. cholerae H1 and
O395 (ragout-examples), K. pneumoniae MGH78578 and NTUH-K2044 (kleborate-examples, .xz: decompress
and gzip them first, `build` reads plain or gzipped FASTA):

    python bench/metagenome.py build ../shared/genomes/*.fna.gz STRAINS/*.gz -o /tmp/mg/strain4s1 --samples 4 --seed 1

Prints a markdown table; results and commands go to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

KMERVAE = str(Path(sys.executable).parent / "kmervae")


def read_genome(path: Path) -> str:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as handle:
        return "".join(line.strip() for line in handle if not line.startswith(">")).upper()


def mutate(seq: str, rate: float, rng: np.random.Generator) -> str:
    """`seq` with a share `rate` of its bases substituted (each by one of the three others)."""
    data = np.frombuffer(seq.encode(), dtype=np.uint8).copy()
    where = np.flatnonzero(rng.random(len(data)) < rate)
    bases = np.frombuffer(b"ACGT", dtype=np.uint8)
    data[where] = bases[(np.searchsorted(bases, data[where]).clip(0, 3) + rng.integers(1, 4, len(where))) % 4]
    return data.tobytes().decode()


def simulate_reads(ref: Path, depth: float, prefix: Path, seed: int) -> None:
    """Paired 2x150 HiSeq 2500 reads of `ref` at `depth`x by ART: prefix1.fq and prefix2.fq."""
    subprocess.run(
        ["art_illumina", "-ss", "HS25", "-i", str(ref), "-p", "-l", "150", "-f", f"{depth:.4f}", "-m", "300",
         "-s", "30", "-o", str(prefix), "-na", "-q", "-rs", str(seed)],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip


def build(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    genomes = {Path(p).name.split(".")[0]: read_genome(Path(p)) for p in args.genomes}
    contigs = []  # (sequence, genome, position)
    for name, seq in genomes.items():
        pos = 0
        while pos < len(seq):
            length = int(np.clip(rng.lognormal(np.log(args.median_length), 0.9), 1000, 100_000))
            if len(seq[pos : pos + length]) >= args.min_length:
                contigs.append((seq[pos : pos + length], name, pos))
            pos += length
    order = rng.permutation(len(contigs))  # ids and order say nothing of the genome
    with open(out / "assembly.fna", "w") as fasta, open(out / "truth.tsv", "w") as table:
        table.write("contig\tgenome\tlength\trecord\tposition\n")
        for new, i in enumerate(order):
            seq, genome, pos = contigs[i]
            cid = f"contig_{new + 1:06d}"
            fasta.write(f">{cid}\n{seq}\n")
            table.write(f"{cid}\t{genome}\t{len(seq)}\t{genome}\t{pos + 1}\n")
    coverage = rng.lognormal(np.log(6.0) - 0.5, 1.0, size=(len(genomes), args.samples))
    np.savetxt(out / "coverage.tsv", coverage, delimiter="\t", header="\t".join(genomes), fmt="%.3f")
    work = out / "work"
    work.mkdir(exist_ok=True)
    refs = write_references(genomes, work, rng)
    for s in range(args.samples):
        here = [(refs[name], coverage[g, s], g) for g, name in enumerate(genomes)]
        map_sample(out, work, out / "assembly.fna", s, here, args)
    print(f"{len(contigs)} contigs of {len(genomes)} genomes, {args.samples} samples in {out}")


def build_multi(args: argparse.Namespace) -> None:
    """The multi-sample set (issue 40): each sample has its own assembly, the gold-standard
    contigs of the genomes present in it, cut independently per sample (a genome present in
    three samples is three different sets of contigs); a genome is present in a sample with
    probability `--presence` (at least three per sample), at a coverage drawn per sample as in
    `build`. `kmervae concat` joins the assemblies into DIR/assembly.fna (S1C<contig>, ...,
    VAMB's naming), every sample's reads are mapped to that catalogue (one minimap2 index), and
    DIR/truth.tsv gains each contig's sample."""
    rng = np.random.default_rng(args.seed)
    out = Path(args.out)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    genomes = {Path(p).name.split(".")[0]: read_genome(Path(p)) for p in args.genomes}
    names = list(genomes)
    present = rng.random((len(names), args.samples)) < args.presence
    for s in range(args.samples):  # at least three genomes in every sample
        if present[:, s].sum() < 3:
            present[rng.choice(len(names), 3, replace=False), s] = True
    coverage = np.where(present, rng.lognormal(np.log(6.0) - 0.5, 1.0, size=present.shape), 0.0)
    np.savetxt(out / "coverage.tsv", coverage, delimiter="\t", header="\t".join(names), fmt="%.3f")
    truth = []  # (catalogue id, genome, length, sample, position)
    assemblies = []
    for s in range(args.samples):
        contigs = []
        for g in np.flatnonzero(present[:, s]):
            seq = genomes[names[g]]
            pos = int(rng.integers(0, args.median_length))  # this sample's own cut points
            if pos >= args.min_length:
                contigs.append((seq[:pos], names[g], 0))
            while pos < len(seq):
                length = int(np.clip(rng.lognormal(np.log(args.median_length), 0.9), 1000, 100_000))
                if len(seq[pos : pos + length]) >= args.min_length:
                    contigs.append((seq[pos : pos + length], names[g], pos))
                pos += length
        path = work / f"sample_{s + 1}.fna"
        with open(path, "w") as fasta:
            for new, i in enumerate(rng.permutation(len(contigs))):
                seq, genome, pos = contigs[i]
                fasta.write(f">contig_{new + 1}\n{seq}\n")
                truth.append((f"S{s + 1}Ccontig_{new + 1}", genome, len(seq), f"S{s + 1}", pos + 1))
        assemblies.append(str(path))
    catalogue = out / "assembly.fna"
    catalogue.unlink(missing_ok=True)
    subprocess.run(
        [KMERVAE, "concat", *assemblies, "-o", str(catalogue), "--min-length", str(args.min_length)], check=True
    )
    with open(out / "truth.tsv", "w") as table:
        table.write("contig\tgenome\tlength\trecord\tposition\tsample\n")
        table.writelines(f"{c}\t{g}\t{n}\t{g}\t{p}\t{s}\n" for c, g, n, s, p in truth)
    index = work / "assembly.mmi"
    subprocess.run(["minimap2", "-t", "2", "-d", str(index), str(catalogue)], check=True, stderr=subprocess.DEVNULL)
    refs = write_references(genomes, work, rng)
    for s in range(args.samples):
        here = [(refs[names[g]], coverage[g, s], g) for g in np.flatnonzero(present[:, s])]
        map_sample(out, work, index, s, here, args)
    print(f"{len(truth)} contigs of {len(genomes)} genomes in {args.samples} samples in {out}")


def write_references(genomes: dict[str, str], work: Path, rng: np.random.Generator) -> dict[str, tuple[Path, Path]]:
    """Each genome's FASTA and a diverged copy (4% of bases substituted, the strain that takes
    `--diverged` of its reads), in WORK: name -> (normal, diverged)."""
    refs = {}
    for name, seq in genomes.items():
        refs[name] = (work / f"{name}.fna", work / f"{name}.div.fna")
        refs[name][0].write_text(f">{name}\n{seq}\n")
        refs[name][1].write_text(f">{name}_div\n{mutate(seq, 0.04, rng)}\n")
    return refs


def map_sample(out: Path, work: Path, reference: Path, s: int, genomes, args) -> None:
    """Simulate sample `s`'s reads of `genomes` ((normal, diverged) references, coverage, index)
    with ART and map them to `reference`: DIR/sample_<s + 1>.bam, sorted and indexed."""
    reads = [work / f"s{s}_1.fq", work / f"s{s}_2.fq"]
    for path in reads:
        path.write_text("")
    for (normal, diverged), depth, g in genomes:
        for ref, share in zip((normal, diverged), (1 - args.diverged, args.diverged), strict=True):
            prefix = work / f"art_{s}_{g}_{ref.stem}"
            simulate_reads(ref, float(depth) * share, prefix, args.seed * 1000 + s * 50 + int(g))
            for mate, path in zip(("1", "2"), reads, strict=True):
                with open(path, "a") as target, open(f"{prefix}{mate}.fq") as part:
                    target.write(part.read())
                os.remove(f"{prefix}{mate}.fq")
    bam = out / f"sample_{s + 1}.bam"
    mapper = subprocess.Popen(
        ["minimap2", "-t", "2", "-ax", "sr", str(reference), *map(str, reads)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    subprocess.run(["samtools", "sort", "-@", "2", "-o", str(bam), "-"], stdin=mapper.stdout, check=True)
    mapper.wait()
    subprocess.run(["samtools", "index", str(bam)], check=True)
    for path in reads:
        path.unlink()
    print(f"sample {s + 1}: {bam}", file=sys.stderr, flush=True)


def read_truth(folder: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    with open(folder / "truth.tsv") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return (
        [r["contig"] for r in rows],
        np.array([r["genome"] for r in rows], dtype=object),
        np.array([int(r["length"]) for r in rows]),
    )


def bin_codes(assignment: dict[str, str], folder: Path) -> np.ndarray:
    """The truth's contigs' bin codes (`kmervae.binning.bins.renumber`: bins of at least 200 kb, the
    largest first; -1 unbinned): contigs missing from `assignment` (under a tool's minimum length,
    or left out) are unbinned."""
    from kmervae.binning.bins import DEFAULT_MIN_BIN_SIZE, renumber

    contigs, _, lengths = read_truth(folder)
    names = sorted(set(assignment.values()))
    index = {name: i for i, name in enumerate(names)}
    raw = np.array([index[assignment[c]] if c in assignment else -1 for c in contigs], dtype=np.int64)
    return renumber(raw, lengths, DEFAULT_MIN_BIN_SIZE)


def score(assignment: dict[str, str], folder: Path) -> dict[str, float]:
    """One scorer for every binner: `bin_codes` against the truth, by bases. On a multi-sample
    set (`build-multi`) every bin is first split by sample, as `kmervae bin --split-by-sample`
    splits (a bin already split stays as it is), and judged against its genome's bases in its
    sample: near-complete sample bins, and `dereplicated`, the genomes with one in some sample."""
    from kmervae.binning.bins import DEFAULT_MIN_BIN_SIZE, MEDIUM, bin_quality
    from kmervae.binning.samples import sample_counts, sample_labels, split_by_sample

    contigs, genomes, lengths = read_truth(folder)
    if is_multi(folder):
        names = sorted(set(assignment.values()))
        index = {name: i for i, name in enumerate(names)}
        raw = np.array([index[assignment[c]] if c in assignment else -1 for c in contigs], dtype=np.int64)
        split = split_by_sample(np.asarray(contigs, dtype=object), raw, names, lengths, SEPARATOR, DEFAULT_MIN_BIN_SIZE)
        codes = split.codes
        quality = bin_quality(codes, sample_labels(genomes, split), lengths)
        dereplicated = sample_counts(split, quality, None)[1]
    else:
        codes = bin_codes(assignment, folder)
        quality = bin_quality(codes, genomes, lengths)
        dereplicated = None
    return {
        "near_complete": quality.near_complete,
        "dereplicated": dereplicated,
        "medium": quality.count(*MEDIUM),
        "binned_share": float(lengths[codes >= 0].sum() / lengths.sum()),
    }


SEPARATOR = "C"
"""The multi-sample set's contig names: S<sample>C<contig> (`kmervae concat`'s, VAMB's)."""


def is_multi(folder: Path) -> bool:
    """A `build-multi` set: an assembly per sample, concatenated (its truth names each contig's sample)."""
    with open(folder / "truth.tsv") as handle:
        return "sample" in handle.readline().rstrip("\n").split("\t")


def cells(s: dict[str, float], wall: float, rss: float) -> str:
    """A result row's cells: near-complete (per sample bins / dereplicated genomes on a
    multi-sample set), medium, binned bases, wall, peak RSS."""
    near = s["near_complete"] if s["dereplicated"] is None else f"{s['near_complete']} / {s['dereplicated']}"
    return f"{near} | {s['medium']} | {s['binned_share']:.1%} | {wall:.0f} s | {rss:.2f} GiB"


ASSIGNMENT = "assignment.tsv"
"""Each binner's contig -> bin table in its run folder (contigs it left out are absent)."""


def write_assignment(assignment: dict[str, str], path: Path) -> None:
    with open(path, "w") as handle:
        handle.write("contig\tbin\n")
        handle.writelines(f"{contig}\t{name}\n" for contig, name in sorted(assignment.items()))


def read_assignment(path: Path) -> dict[str, str]:
    with open(path) as handle:
        return {row["contig"]: row["bin"] for row in csv.DictReader(handle, delimiter="\t")}


def timed(command: list[str], log: Path, **kwargs) -> tuple[float, float]:
    """Run `command` (its output to `log`); (wall seconds, peak RSS GiB of it and its children)."""
    with open(log, "w") as out:
        result = subprocess.run(
            ["/usr/bin/time", "-f", "%e %M", "-o", str(log) + ".time", *command], stdout=out, stderr=out, **kwargs
        )
    if result.returncode:
        raise RuntimeError(f"{command[0]} failed (exit {result.returncode}); see {log}")
    wall, rss = Path(str(log) + ".time").read_text().split()[-2:]
    return float(wall), int(rss) / 2**20


def fasta_bins(folder: Path, suffix: str) -> dict[str, str]:
    """contig -> bin from a folder of one FASTA per bin (MetaBAT2's and SemiBin2's output)."""
    out = {}
    for path in sorted(folder.glob(f"*{suffix}")):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt") as handle:
            out.update({line[1:].split()[0]: path.name for line in handle if line.startswith(">")})
    return out


def bam_files(folder: Path, args) -> list[str]:
    """The first `--samples` BAM files of DIR (all by default): the 2- and 1-sample sets are the
    4-sample set's first samples, so every set bins the same contigs."""
    bams = sorted(str(p) for p in folder.glob("sample_*.bam"))
    return bams[: args.samples or len(bams)]


def kmervae_features(folder: Path, args) -> Path:
    """Depths by `kmervae abundance` and features by `kmervae featurize --abundance` (no labels: a
    binner sees none), made once per set and shared by the kmervae and baseline binners."""
    bams = bam_files(folder, args)
    out = folder / "run" / f"{len(bams)}s"
    features = out / "features"
    if not (features / "_kmervae_dataset.json").exists():  # written last: the features are complete
        depth = out / "depth.tsv"
        run_step([KMERVAE, "abundance", *bams, "-o", str(depth), "--overwrite"], out / "abundance.log")
        run_step(
            [KMERVAE, "featurize", str(folder / "assembly.fna"), "--abundance", str(depth), "--min-length", "1000",
             "-o", str(features), "--overwrite", "--quiet"],
            out / "featurize.log",
        )  # fmt: skip
    return features


def set_markers(folder: Path) -> Path:
    """The set's marker genes (`kmervae markers` on its assembly, made once per set and shared by
    every sample count): `kmervae bin` and the baseline judge and recluster their bins by them, as
    the README's metagenome workflow does (`kmervae bin --markers`)."""
    path = folder / "markers.tsv"
    if not path.exists():
        run_step([KMERVAE, "markers", str(folder / "assembly.fna"), "-o", str(path)], folder / "work" / "markers.log")
    return path


def run_step(command: list[str], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    timed(command, log)


def run_kmervae(folder: Path, out: Path, args, seed: int = 0) -> tuple[dict[str, str], float, float]:
    """featurize (timed apart, shared with the baseline), train on every contig, embed, bin."""
    features = kmervae_features(folder, args)
    settings = [f"train.seed={seed}", *args.set]
    steps = [
        [KMERVAE, "train", str(features), "--engine", "local", "--preset", args.preset, "--no-mlflow",
         *(["--epochs", str(args.epochs)] if args.epochs else []), "--name", "bench", "--storage", str(out / "runs"),
         "--out", str(out / "model"), *[x for s in settings for x in ("--set", s)]],
        [KMERVAE, "embed", str(out / "model" / "best.pt"), str(features), "-o", str(out / "emb.parquet"),
         "--overwrite"],
        [KMERVAE, "bin", str(out / "emb.parquet"), "-o", str(out / "binned"), "--overwrite", *bin_flags(folder, args)],
    ]  # fmt: skip
    if args.reuse and (out / "emb.parquet").exists():  # an earlier run of this seed: bin its embeddings again
        steps = steps[2:]
    wall = peak = 0.0
    for i, step in enumerate(steps):
        seconds, rss = timed(step, out / f"step{i}.log")
        wall, peak = wall + seconds, max(peak, rss)
    return binned(out / "binned"), wall, peak


def bin_flags(folder: Path, args) -> list[str]:
    """`kmervae bin`'s flags: the set's markers (`--recluster` by `args.recluster`, else bin's
    default with markers) and `--resolution R` where `--set` chose one (train.bin_resolution: what a
    sweep's val/nc_bins used), else bin's default."""
    flags = ["--markers", str(set_markers(folder)), "--recluster", args.recluster]
    if is_multi(folder):
        flags += ["--split-by-sample", SEPARATOR]
    chosen = [s.split("=", 1)[1] for s in args.set if s.startswith("train.bin_resolution=")]
    return flags + (["--resolution", chosen[-1]] if chosen else [])


def kmervae_name(args) -> str:
    """kmervae's run folders' prefix: `kmervae`, or `kmervae-TAG` for a lever kept beside the preset's."""
    return f"kmervae-{args.tag}" if args.tag else "kmervae"


def binned(folder: Path) -> dict[str, str]:
    """contig -> bin of a `kmervae bin` folder (unbinned contigs left out)."""
    with open(folder / "bins.tsv") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return {r["contig_id"]: r["bin"] for r in rows if r["bin"] != "unbinned"}


def run_ensembles(folder: Path, base: Path, args) -> list[int]:
    """`kmervae bin` of every `--ensemble` consecutive seeds' embeddings together (seeds 0 1 2, then
    3 4 5, ...): near-complete bins of each ensemble, printed as rows; the time is the binning's."""
    counts = []
    for start in range(0, len(args.seeds) - args.ensemble + 1, args.ensemble):
        chunk = args.seeds[start : start + args.ensemble]
        out = base / f"{kmervae_name(args)}-ensemble-{'-'.join(map(str, chunk))}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        embeddings = [str(base / f"{kmervae_name(args)}-{seed}" / "emb.parquet") for seed in chunk]
        wall, rss = timed(
            [KMERVAE, "bin", *embeddings, "-o", str(out / "binned"), "--overwrite", *bin_flags(folder, args)],
            out / "bin.log",
        )
        assignment = binned(out / "binned")
        write_assignment(assignment, out / ASSIGNMENT)
        s = score(assignment, folder)
        counts.append(headline(s))
        print(f"| kmervae ensemble of seeds {' '.join(map(str, chunk))} | {cells(s, wall, rss)} |", flush=True)
    if len(counts) > 1:
        print(f"| kmervae ensembles, median (range) of {len(counts)} | {np.median(counts):g} "
              f"({min(counts)}-{max(counts)}) | | | | |", flush=True)  # fmt: skip
    return counts


def baseline_features(features: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(contig ids, lengths, TNF beside the abundance profile) of a feature dataset, made once."""
    from kmervae.apply.evaluate import baselines
    from kmervae.base.feature_table import FeatureTable

    if features not in _BASELINE_FEATURES:
        table = FeatureTable.from_parquet(features)
        x = baselines(features, table.contig_ids, 32)["tnf_abundance"]
        _BASELINE_FEATURES[features] = (table.contig_ids, table.length, x)
    return _BASELINE_FEATURES[features]


_BASELINE_FEATURES: dict[Path, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def run_baseline(folder: Path, out: Path, args, seed: int = 0) -> tuple[dict[str, str], float, float]:
    """The untrained baseline with the clusterer's seed `seed`: its one source of chance, as the
    training seed is the model's (Leiden's count moves by up to two bins with its seed)."""
    import resource

    from kmervae.binning.markers import read_markers
    from kmervae.binning.recluster import partition

    features = kmervae_features(folder, args)
    started = time.perf_counter()
    ids, lengths, x = baseline_features(features)
    markers = read_markers(set_markers(folder)).presence(ids)
    codes = partition(x, lengths, markers, args.recluster, seed=seed)  # what `kmervae bin` does with markers
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return (
        {cid: str(c) for cid, c in zip(ids, codes, strict=True) if c >= 0},
        time.perf_counter() - started,
        peak,
    )


def run_metabat(folder: Path, out: Path, args) -> tuple[dict[str, str], float, float]:
    bams = bam_files(folder, args)
    depth = out / "depth.txt"
    w1, r1 = timed(["jgi_summarize_bam_contig_depths", "--outputDepth", str(depth), *bams], out / "depth.log")
    if is_multi(folder):
        return metabat_per_sample(folder, out, depth, w1, r1)
    w2, r2 = timed(
        ["metabat2", "-i", str(folder / "assembly.fna"), "-a", str(depth), "-o", str(out / "bins" / "bin"),
         "-t", "2", "--seed", "1"],
        out / "metabat.log",
    )  # fmt: skip
    return fasta_bins(out / "bins", ".fa"), w1 + w2, max(r1, r2)


def metabat_per_sample(folder: Path, out: Path, depth: Path, wall: float, rss: float):
    """MetaBAT2 on each sample's own contigs (as a study without multi-sample binning runs it),
    with the depths of every sample's reads mapped to the catalogue: its bins are sample bins."""
    with open(depth) as handle:
        header, *rows = handle.readlines()
    contigs = {}
    with open(folder / "assembly.fna") as handle:
        name = None
        for line in handle:
            if line.startswith(">"):
                name = line[1:].split()[0]
                contigs[name] = []
            else:
                contigs[name].append(line)
    assignment = {}
    for sample in sorted({c.split(SEPARATOR, 1)[0] for c in contigs}, key=lambda s: int(s[1:])):
        part = out / sample
        part.mkdir(parents=True, exist_ok=True)
        prefix = f"{sample}{SEPARATOR}"
        with open(part / "assembly.fna", "w") as fasta:
            fasta.writelines(f">{c}\n{''.join(lines)}" for c, lines in contigs.items() if c.startswith(prefix))
        with open(part / "depth.txt", "w") as table:
            table.writelines([header, *(r for r in rows if r.startswith(prefix))])
        seconds, peak = timed(
            ["metabat2", "-i", str(part / "assembly.fna"), "-a", str(part / "depth.txt"), "-o",
             str(part / "bins" / "bin"), "-t", "2", "--seed", "1"],
            part / "metabat.log",
        )  # fmt: skip
        wall, rss = wall + seconds, max(rss, peak)
        assignment.update({c: f"{sample}_{b}" for c, b in fasta_bins(part / "bins", ".fa").items()})
    return assignment, wall, rss


def run_vamb(folder: Path, out: Path, args) -> tuple[dict[str, str], float, float]:
    bams = bam_files(folder, args)
    result = out / "vamb"
    wall, rss = timed(
        [args.vamb, "bin", "default", "--outdir", str(result), "--fasta", str(folder / "assembly.fna"),
         "--bamfiles", *bams, *(["-o", SEPARATOR] if is_multi(folder) else [])],
        out / "vamb.log",
    )  # fmt: skip
    # on a multi-sample set VAMB splits its clusters by sample itself (binsplit, separator C)
    clusters = "vae_clusters_split.tsv" if is_multi(folder) else "vae_clusters_unsplit.tsv"
    with open(result / clusters) as handle:
        rows = [line.rstrip("\n").split("\t") for line in handle if not line.startswith("clustername")]
    return {contig: cluster for cluster, contig in rows}, wall, rss


def run_semibin(folder: Path, out: Path, args) -> tuple[dict[str, str], float, float]:
    bams = bam_files(folder, args)
    result = out / "semibin"
    if is_multi(folder):  # a model per sample, trained on every sample's depths, bins split by sample
        wall, rss = timed(
            [args.semibin, "multi_easy_bin", "--input-fasta", str(folder / "assembly.fna"), "--input-bam", *bams,
             "--output", str(result), "--separator", SEPARATOR, "--threads", "2", "--epochs", str(args.semibin_epochs)],
            out / "semibin.log",
        )  # fmt: skip
        assignment = {}
        for path in sorted((result / "bins").glob("*.fa*")):
            sample = path.name.split("_", 1)[0]
            for contig in fasta_bins(result / "bins", path.name):
                name = contig if contig.startswith(f"{sample}{SEPARATOR}") else f"{sample}{SEPARATOR}{contig}"
                assignment[name] = path.name
        return assignment, wall, rss
    # its pretrained models serve one sample only: with several it trains (`--semibin-epochs`)
    model = ["--environment", "global"] if len(bams) == 1 else ["--epochs", str(args.semibin_epochs)]
    wall, rss = timed(
        [args.semibin, "single_easy_bin", "--input-fasta", str(folder / "assembly.fna"), "--input-bam", *bams,
         "--output", str(result), "--threads", "2", *model],
        out / "semibin.log",
    )  # fmt: skip
    return fasta_bins(result / "output_bins", ".fa.gz"), wall, rss


def headline(s: dict[str, float]) -> int:
    """The count binners are ranked by: near-complete bins, dereplicated on a multi-sample set."""
    return s["near_complete"] if s["dereplicated"] is None else s["dereplicated"]


SEEDED = ("kmervae", "baseline")
"""Binners run once per `--seeds` seed: kmervae's training seed, the baseline's clusterer seed."""

BINNERS = {
    "kmervae": run_kmervae,
    "baseline": run_baseline,
    "metabat": run_metabat,
    "vamb": run_vamb,
    "semibin": run_semibin,
}


def run(args: argparse.Namespace) -> None:
    folder = Path(args.dir)
    samples = len(bam_files(folder, args))
    print(f"{folder.name}, {samples} sample(s): {len(read_truth(folder)[0]):,} contigs")
    print("| binner | near-complete | medium | binned bases | wall | peak RSS |")
    print("|---|---|---|---|---|---|")
    counts_of = {}
    for name in args.binners:
        runs = [(f"{name} seed {seed}", seed) for seed in args.seeds] if name in SEEDED else [(name, None)]
        counts = []
        for label, seed in runs:
            prefix = kmervae_name(args) if name == "kmervae" else name
            out = folder / "run" / f"{samples}s" / (prefix if seed is None else f"{prefix}-{seed}")
            if out.exists() and not (args.keep or args.reuse):
                shutil.rmtree(out)
            (out / "bins").mkdir(parents=True, exist_ok=True)
            try:
                binner = BINNERS[name]
                assignment, wall, rss = binner(folder, out, args) if seed is None else binner(folder, out, args, seed)
            except (RuntimeError, FileNotFoundError, TypeError) as err:
                print(f"| {label} | failed: {err} | | | | |", flush=True)
                continue
            write_assignment(assignment, out / ASSIGNMENT)  # bench/markers.py judges it by marker genes
            s = score(assignment, folder)
            counts.append(headline(s))
            print(f"| {label} | {cells(s, wall, rss)} |", flush=True)
        counts_of[name] = counts
        if len(counts) > 1:
            print(f"| {name}, median (range) of {len(counts)} seeds | {np.median(counts):g} "
                  f"({min(counts)}-{max(counts)}) | | | | |", flush=True)  # fmt: skip
        if name == "kmervae" and args.ensemble > 1:
            counts_of["ensembles"] = run_ensembles(folder, folder / "run" / f"{samples}s", args)
    for name, what in (("kmervae", "seed(s)"), ("ensembles", f"ensemble(s) of {args.ensemble} seeds")):
        if counts_of.get(name) and counts_of.get("baseline"):
            print(gate(counts_of[name], counts_of["baseline"], what), flush=True)


def gate(kmervae: list[int], baseline: list[int], what: str = "seed(s)") -> str:
    """The model's worth (issue 38): its median near-complete bins minus the untrained baseline's
    on the same clusterer (each over its seeds), and the range of the differences of every run of
    the model with every run of the baseline."""
    gains = [count - other for count in kmervae for other in baseline]
    return (
        f"gate: kmervae - baseline = {np.median(kmervae) - np.median(baseline):+g} near-complete bin(s), "
        f"medians of {len(kmervae)} {what} and {len(baseline)} baseline seed(s) "
        f"(range {min(gains):+d} to {max(gains):+d})"
    )


def main() -> None:
    from kmervae.apply.binning import DEFAULT_RECLUSTER
    from kmervae.binning.recluster import METHODS

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
    m = sub.add_parser("build-multi", help="the multi-sample set: an assembly per sample, concatenated")
    m.add_argument("genomes", nargs="+")
    m.add_argument("-o", "--out", required=True)
    m.add_argument("--samples", type=int, default=10)
    m.add_argument("--presence", type=float, default=0.6, help="chance that a genome is in a sample")
    m.add_argument("--seed", type=int, default=1)
    m.add_argument("--median-length", type=float, default=4000)
    m.add_argument("--min-length", type=int, default=2000, help="VAMB's and kmervae concat's default")
    m.add_argument("--diverged", type=float, default=0.05)
    m.set_defaults(run=build_multi)
    r = sub.add_parser("run")
    r.add_argument("dir")
    r.add_argument("--binners", nargs="+", choices=list(BINNERS), default=["kmervae", "baseline", "metabat"])
    r.add_argument("--samples", type=int, help="bin with the first N samples' BAM files (default: all)")
    r.add_argument("--preset", default="metagenome", help="kmervae's preset")
    r.add_argument("--epochs", type=int, help="kmervae's epochs (default: the preset's)")
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="kmervae's training seeds")
    r.add_argument("--keep", action="store_true", help="keep earlier outputs in DIR/run (default: replace)")
    r.add_argument("--reuse", action="store_true", help="kmervae: bin a seed embedded before again")
    r.add_argument(
        "--ensemble", type=int, default=1, help="kmervae: also bin every N consecutive seeds' embeddings together"
    )
    r.add_argument("--set", nargs="*", default=[], help="kmervae settings on top of the preset")
    r.add_argument(
        "--recluster", default=DEFAULT_RECLUSTER, choices=METHODS,
        help="kmervae bin's and the baseline's reclustering by the set's markers (default: bin's own default)",
    )  # fmt: skip
    r.add_argument("--tag", help="kmervae's outputs in DIR/run/<N>s/kmervae-TAG-<seed> (a lever beside the preset)")
    r.add_argument("--vamb", help="the vamb command of its own environment")
    r.add_argument("--semibin", help="the SemiBin2 command of its own environment")
    r.add_argument("--semibin-epochs", type=int, default=15, help="SemiBin2's training epochs with several samples")
    r.set_defaults(run=run)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
