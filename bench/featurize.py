"""Featurizer benchmark: counting and end-to-end throughput, start-up, bytes per contig, memory.

Runs on the ten shared genomes cut into 5 kb contigs (about 28 Mbp):

- count:   the compiled kernel alone (7-, 4-, 3-mers and GC in one pass), sequences in memory;
- read:    FASTA parsing + decompression alone: the block scanner, and FastaReader (dnaio);
- e2e:     FASTA.gz -> parquet dataset, in-process, after a warm-up (steady-state throughput);
- start:   `kmervae --help`, `kmervae featurize --help` and `kmervae featurize` of a 179 kb genome
           as fresh processes (the start-up a user waits for);
- whole:   the command a user types on the ten genomes' 5 kb fragments written six times under new
           ids (plain FASTA, 167.5 Mbp, 33,534 contigs), beside VAMB's composition step
           (`vamb.parsecontigs.Composition.from_file`: tetranucleotide frequencies) as a whole
           process of the interpreter given by --vamb-python, in the same run;
- scale:   with --scale-gbp X, a FASTA of X Gbp (the genomes repeated under new ids, 80 columns):
           in-process end to end (a fresh process that times `featurize()` after its imports),
           plain and gzip (level 1), and the same split into four gzip files, with the peak
           memory of the process.

    .venv/bin/python bench/featurize.py [--genomes DIR] [--repeat 5] [--scale-gbp 1.0] [--vamb-python PY]

Prints a table; copy it into bench/RESULTS.md with the date, machine and commit.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import dnaio
import numpy as np
import xopen

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kmervae.features.fasta import FastaReader  # noqa: E402
from kmervae.features.fasta_blocks import read_files  # noqa: E402
from kmervae.features.featurize import FeaturizeSettings, featurize, load_kernels  # noqa: E402
from kmervae.features.kmer_counter import KmerCounter  # noqa: E402
from kmervae.features.labels import Labels  # noqa: E402

FRAGMENT = 5000


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_count(files: list[Path], repeat: int) -> tuple[float, int]:
    seqs = [rec.sequence for f in files for rec in FastaReader(f)]
    starts, ends, pieces, offset = [], [], [], 0
    for seq in seqs:
        s = np.arange(0, len(seq), FRAGMENT)
        starts.append(s + offset)
        ends.append(np.minimum(s + FRAGMENT, len(seq)) + offset)
        pieces.append(seq)
        offset += len(seq)
    buf = np.concatenate(pieces)
    starts, ends = np.concatenate(starts), np.concatenate(ends)
    counter = KmerCounter(256)

    def run():
        for lo in range(0, len(starts), 256):
            counter.count(buf, starts[lo : lo + 256], ends[lo : lo + 256])

    run()  # compile / load from cache
    return best_of(repeat, run), len(buf)


def bench_read(files: list[Path], repeat: int) -> tuple[float, float]:
    """Seconds to read the files with the block scanner, and with FastaReader (dnaio)."""

    def scan():
        for _ in read_files(files, ahead=1):
            pass

    def exact():
        for f in files:
            for _ in FastaReader(f):
                pass

    scan()
    return best_of(repeat, scan), best_of(repeat, exact)


def bench_e2e(files: list[Path], out: Path, repeat: int, workers: int) -> tuple[float, object]:
    settings = FeaturizeSettings(fragment_length=FRAGMENT, min_length=1000, workers=workers, overwrite=True)
    featurize(files[:1], out, settings, progress=False)  # warm-up
    summaries = []
    seconds = best_of(
        repeat, lambda: summaries.append(featurize(files, out, settings, Labels(from_filename=True), progress=False))
    )
    return seconds, summaries[-1]


def tree_rss(pid: int) -> int:
    """Resident memory of a process and all its descendants, in bytes (from /proc)."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status") as fh:
                total += next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:"))
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    stack.extend(int(c) for c in fh.read().split())
        except (FileNotFoundError, StopIteration, ProcessLookupError):
            continue
    return total


def run_process(cmd: list[str]) -> tuple[float, int, str]:
    """Wall time, peak tree RSS and stdout of a command (run from the repository)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=REPO)
    peak = 0
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss(proc.pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    out, _ = proc.communicate()
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with {proc.returncode}")
    return time.perf_counter() - start, peak, out


def run_cli(args: list[str]) -> tuple[float, int, str]:
    """Wall time, peak tree RSS and stdout of a `kmervae` CLI run."""
    return run_process([sys.executable, "-m", "kmervae.cli", *args])


def spread(times: list[float]) -> str:
    return f"median {statistics.median(times):.2f} s ({min(times):.2f}-{max(times):.2f})"


def make_big_fasta(files: list[Path], path: Path, gbp: float, tag: str = "copy") -> int:
    """Repeat the genomes under new record ids until `gbp` Gbp are written (80 columns; gzip level 1
    when the name ends in .gz)."""
    records = [(r.name.split()[0], r.sequence) for f in files for r in dnaio.open(f)]
    written, copy = 0, 0
    with xopen.xopen(path, "wt", compresslevel=1, threads=0) as fh:
        while written < gbp * 1e9:
            for rid, seq in records:
                fh.write(f">{rid}_{tag}{copy}\n")
                fh.writelines(seq[i : i + 80] + "\n" for i in range(0, len(seq), 80))
                written += len(seq)
            copy += 1
    return written


INPROCESS_SNIPPET = """
import sys, time
sys.path.insert(0, sys.argv[1])
from kmervae.features.featurize import FeaturizeSettings, featurize, load_kernels
load_kernels()
started = time.perf_counter()
summary = featurize(sys.argv[3:], sys.argv[2], FeaturizeSettings(fragment_length=5000, overwrite=True), progress=False)
print(time.perf_counter() - started, summary.record_bases, summary.workers)
"""


def bench_inprocess(paths: list[Path], out: Path) -> tuple[float, int, int, int]:
    """Seconds of `featurize()` in a fresh process (imports and kernels loaded first), bases,
    workers, and the process's peak RSS."""
    _, peak, stdout = run_process([sys.executable, "-c", INPROCESS_SNIPPET, str(REPO), str(out), *map(str, paths)])
    seconds, bases, workers = stdout.split()
    subprocess.run(["rm", "-rf", str(out)], check=True)
    return float(seconds), int(bases), int(workers), peak


VAMB_WHOLE = """
import sys
from vamb.parsecontigs import Composition
with open(sys.argv[1], "rb") as handle:
    comp = Composition.from_file(handle, sys.argv[1], minlength=1000)
print(comp.nseqs)
"""


def bench_start(files: list[Path], tmp: Path, repeat: int) -> list[tuple[str, str, str]]:
    small = min(files, key=lambda f: f.stat().st_size)
    rows = []
    for name, args in [
        ("start: kmervae --help", ["--help"]),
        ("start: kmervae featurize --help", ["featurize", "--help"]),
        (f"start: kmervae featurize {small.name}", ["featurize", str(small), "-o", str(tmp / "s"), "--overwrite"]),
    ]:
        run_cli(args)  # page cache, numba cache
        times = [run_cli(args)[0] for _ in range(repeat)]
        rows.append((name, "", spread(times)))
    return rows


def bench_whole(files: list[Path], tmp: Path, python: str, repeat: int) -> list[tuple[str, str, str]]:
    """The command a user types, kmervae beside VAMB's composition step, on 167.5 Mbp of 5 kb fragments."""
    path = tmp / "fragments6.fa"
    bases = write_fragments(files, path, copies=6)
    args = ["featurize", str(path), "-o", str(tmp / "whole"), "--overwrite", "--quiet"]
    run_cli(args)
    ours, peaks = [], []
    for _ in range(repeat):
        wall, peak, _ = run_cli(args)
        ours.append(wall)
        peaks.append(peak)
    subprocess.run(["rm", "-rf", str(tmp / "whole")], check=True)
    rows = [
        (
            f"whole: kmervae featurize ({bases / 1e6:.1f} Mbp)",
            f"{bases / 1e6 / statistics.median(ours):.0f} Mbp/s",
            f"{spread(ours)}, peak RSS {max(peaks) / 2**20:.0f} MiB",
        )
    ]
    check = subprocess.run([python, "-c", "import vamb"], capture_output=True, text=True)
    if check.returncode != 0:
        return rows + [("whole: vamb composition", "n/a", f"VAMB not importable with {python}")]
    vamb = [run_process([python, "-c", VAMB_WHOLE, str(path)])[0] for _ in range(repeat + 1)][1:]
    rows.append(
        (
            "whole: vamb Composition.from_file process",
            f"{bases / 1e6 / statistics.median(vamb):.0f} Mbp/s",
            f"{spread(vamb)}; kmervae {statistics.median(vamb) / statistics.median(ours):.2f}x VAMB's speed",
        )
    )
    return rows


def bench_scale(files: list[Path], tmp: Path, gbp: float) -> list[tuple[str, str, str]]:
    rows = []
    plain, gz = tmp / "big.fa", tmp / "big.fa.gz"
    make_big_fasta(files, plain, gbp)
    make_big_fasta(files, gz, gbp)
    quarters = [tmp / f"big{q}.fa.gz" for q in range(4)]
    for q, part in enumerate(quarters):
        make_big_fasta(files, part, gbp / 4, tag=f"q{q}_")
    for name, paths in [("plain", [plain]), ("gzip -1, one file", [gz]), ("gzip -1, four files", quarters)]:
        seconds, bases, workers, peak = bench_inprocess(paths, tmp / "scale-out")
        rows.append(
            (
                f"scale: in-process {bases / 1e9:.2f} Gbp {name}",
                f"{bases / 1e6 / seconds:.0f} Mbp/s",
                f"{seconds:.1f} s, {workers} workers, peak RSS {peak / 2**20:.0f} MiB",
            )
        )
    for path in [plain, gz, *quarters]:
        path.unlink()
    return rows


VAMB_SNIPPET = """
import sys, time
from vamb.parsecontigs import Composition
path = sys.argv[1]
best = None
for _ in range(int(sys.argv[2])):
    with open(path, "rb") as handle:
        started = time.perf_counter()
        comp = Composition.from_file(handle, path, minlength=1000)
        seconds = time.perf_counter() - started
    best = seconds if best is None else min(best, seconds)
print(best, comp.nseqs, comp.matrix.shape[1])
"""


def write_fragments(files: list[Path], path: Path, copies: int = 1) -> int:
    """The 5 kb fragments (the tail kept when >= 1 kb) as one plain FASTA, `copies` times under new
    ids; returns bases written."""
    written = 0
    with open(path, "w") as fh:
        for copy in range(copies):
            tag = f"_c{copy}" if copies > 1 else ""
            for f in files:
                for record in dnaio.open(f):
                    seq = record.sequence
                    for lo in range(0, len(seq), FRAGMENT):
                        piece = seq[lo : lo + FRAGMENT]
                        if len(piece) >= 1000:
                            fh.write(f">{record.name.split()[0]}{tag}:{lo + 1}-{lo + len(piece)}\n{piece}\n")
                            written += len(piece)
    return written


def bench_vamb(files: list[Path], tmp: Path, python: str, repeat: int) -> list[tuple[str, str, str]]:
    """VAMB's composition and kmervae on the same fragments, side by side."""
    fragments = tmp / "fragments.fa"
    bases = write_fragments(files, fragments)
    run = subprocess.run([python, "-c", VAMB_SNIPPET, str(fragments), str(repeat)], capture_output=True, text=True)
    if run.returncode != 0:
        return [
            ("vamb composition", "n/a", f"VAMB not usable with {python}: {run.stderr.strip().splitlines()[-1][:120]}")
        ]
    seconds, nseqs, dims = run.stdout.split()
    version = subprocess.run(
        [python, "-c", "import importlib.metadata as m; print(m.version('vamb'))"], capture_output=True, text=True
    ).stdout.strip()
    settings = FeaturizeSettings(min_length=1000, workers=1, overwrite=True)
    featurize([fragments], tmp / "frag-warm", settings, progress=False)
    ours = best_of(repeat, lambda: featurize([fragments], tmp / "frag", settings, progress=False))
    return [
        (
            f"vamb {version} composition (TNF, {dims} dims)",
            f"{bases / 1e6 / float(seconds):.0f} Mbp/s",
            f"{float(seconds):.3f} s, {nseqs} contigs",
        ),
        (
            "kmervae on the same fragments (7+4+3-mers + GC)",
            f"{bases / 1e6 / ours:.0f} Mbp/s",
            f"{ours:.3f} s; {float(seconds) / ours:.2f}x VAMB's speed",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--genomes", type=Path, default=REPO.parent / "shared" / "genomes")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--scale-gbp", type=float, default=0.0, help="also run FASTA of this many Gbp (plain, gzip, four gzip files)"
    )
    parser.add_argument(
        "--vamb-python", default=sys.executable, help="an interpreter with VAMB installed (default: this one)"
    )
    args = parser.parse_args()
    files = sorted(args.genomes.glob("*.fna.gz"))
    if not files:
        raise SystemExit(f"no *.fna.gz genomes in {args.genomes}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="kmervae-bench-") as tmp:
        tmp = Path(tmp)
        load_kernels()
        count_s, bases = bench_count(files, args.repeat)
        rows.append(("count (kernel, 7+4+3-mers + GC)", f"{bases / 1e6 / count_s:.0f} Mbp/s", f"{count_s:.3f} s"))
        scan_s, exact_s = bench_read(files, args.repeat)
        rows.append(("read: block scanner + gzip", f"{bases / 1e6 / scan_s:.0f} Mbp/s", f"{scan_s:.3f} s"))
        rows.append(("read: FastaReader (dnaio) + gzip", f"{bases / 1e6 / exact_s:.0f} Mbp/s", f"{exact_s:.3f} s"))
        for workers in (1, 2):
            e2e_s, summary = bench_e2e(files, tmp / "e2e", args.repeat, workers=workers)
            rows.append((f"e2e in-process, {workers} worker(s)", f"{bases / 1e6 / e2e_s:.0f} Mbp/s", f"{e2e_s:.3f} s"))
        per_contig = summary.output_bytes / summary.contigs
        rows.append(
            (
                "output size",
                f"{per_contig:.0f} B/contig",
                f"{summary.contigs} contigs, {summary.output_bytes / 2**20:.1f} MiB",
            )
        )
        rows += bench_start(files, tmp, args.repeat)
        rows += bench_whole(files, tmp, args.vamb_python, args.repeat)
        rows += bench_vamb(files, tmp, args.vamb_python, args.repeat)
        if args.scale_gbp:
            rows += bench_scale(files, tmp, args.scale_gbp)
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'rate':>14}  detail")
    for name, rate, detail in rows:
        print(f"{name:<{width}}  {rate:>14}  {detail}")


if __name__ == "__main__":
    main()
