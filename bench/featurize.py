"""Featurizer benchmark: counting and end-to-end throughput, bytes per contig, memory.

Runs on the ten shared genomes cut into 5 kb contigs (about 28 Mbp):

- count:  the compiled kernel alone (7-, 4-, 3-mers and GC in one pass), sequences in memory;
- read:   FASTA parsing + decompression alone (dnaio + xopen);
- e2e:    FASTA.gz -> parquet dataset, in-process, after a warm-up (steady-state throughput);
- cli:    the same as a fresh `kmervae featurize` process (includes imports and numba's cache load);
- scale:  with --scale-gbp X, a plain FASTA of X Gbp (the genomes repeated under new ids) through
          the CLI with 1 and 2 workers, reporting wall time and the peak memory of the process tree;
- vamb:   when VAMB is installed (here, or in the interpreter given by --vamb-python), VAMB's
          composition step (`vamb.parsecontigs.Composition.from_file`: tetranucleotide
          frequencies) and kmervae's in-process featurizer on the same plain FASTA of the 5 kb
          fragments, side by side in one run.

    .venv/bin/python bench/featurize.py [--genomes DIR] [--repeat 5] [--scale-gbp 1.0] [--vamb-python PY]

Prints a table; copy it into bench/RESULTS.md with the date, machine and commit.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import dnaio
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from data_pipeline.fasta import FastaReader  # noqa: E402
from data_pipeline.featurize import FeaturizeSettings, featurize  # noqa: E402
from data_pipeline.kmer_counter import KmerCounter  # noqa: E402
from data_pipeline.labels import Labels  # noqa: E402

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


def bench_read(files: list[Path], repeat: int) -> float:
    def run():
        for f in files:
            for _ in FastaReader(f):
                pass

    return best_of(repeat, run)


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


def run_cli(args: list[str]) -> tuple[float, int, str]:
    """Wall time, peak tree RSS and stdout of a `kmervae` CLI run."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "kmervae.cli", *args], stdout=subprocess.PIPE, text=True, cwd=REPO)
    peak = 0
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss(proc.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    out, _ = proc.communicate()
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"kmervae {' '.join(args)} failed with {proc.returncode}")
    return time.perf_counter() - start, peak, out


def make_big_fasta(files: list[Path], path: Path, gbp: float) -> int:
    """Repeat the genomes under new record ids until `gbp` Gbp are written (plain FASTA, 80 columns)."""
    records = [(r.name.split()[0], r.sequence) for f in files for r in dnaio.open(f)]
    written, copy = 0, 0
    with open(path, "w") as fh:
        while written < gbp * 1e9:
            for rid, seq in records:
                fh.write(f">{rid}_copy{copy}\n")
                fh.writelines(seq[i : i + 80] + "\n" for i in range(0, len(seq), 80))
                written += len(seq)
            copy += 1
    return written


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


def write_fragments(files: list[Path], path: Path) -> int:
    """The 5 kb fragments (the tail kept when >= 1 kb) as one plain FASTA; returns bases written."""
    written = 0
    with open(path, "w") as fh:
        for f in files:
            for record in dnaio.open(f):
                seq = record.sequence
                for lo in range(0, len(seq), FRAGMENT):
                    piece = seq[lo : lo + FRAGMENT]
                    if len(piece) >= 1000:
                        fh.write(f">{record.name.split()[0]}:{lo + 1}-{lo + len(piece)}\n{piece}\n")
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
    parser.add_argument("--scale-gbp", type=float, default=0.0, help="also run a plain FASTA of this many Gbp")
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
        count_s, bases = bench_count(files, args.repeat)
        rows.append(("count (kernel, 7+4+3-mers + GC)", f"{bases / 1e6 / count_s:.0f} Mbp/s", f"{count_s:.3f} s"))
        read_s = bench_read(files, args.repeat)
        rows.append(("read (dnaio + gzip)", f"{bases / 1e6 / read_s:.0f} Mbp/s", f"{read_s:.3f} s"))
        e2e_s, summary = bench_e2e(files, tmp / "e2e", args.repeat, workers=1)
        rows.append(("e2e in-process, 1 worker", f"{bases / 1e6 / e2e_s:.0f} Mbp/s", f"{e2e_s:.3f} s"))
        per_contig = summary.output_bytes / summary.contigs
        rows.append(
            (
                "output size",
                f"{per_contig:.0f} B/contig",
                f"{summary.contigs} contigs, {summary.output_bytes / 2**20:.1f} MiB",
            )
        )
        cli_args = [
            "featurize",
            *map(str, files),
            "-o",
            str(tmp / "cli"),
            "--fragment-length",
            str(FRAGMENT),
            "--label-from-filename",
            "--quiet",
        ]
        wall, peak, _ = run_cli([*cli_args, "--workers", "1"])
        rows.append(
            (
                "cli fresh process, 1 worker",
                f"{bases / 1e6 / wall:.0f} Mbp/s",
                f"{wall:.2f} s wall, peak RSS {peak / 2**20:.0f} MiB",
            )
        )
        rows += bench_vamb(files, tmp, args.vamb_python, args.repeat)
        if args.scale_gbp:
            big = tmp / "big.fa"
            big_bases = make_big_fasta(files, big, args.scale_gbp)
            for workers in (1, 2):
                out = tmp / f"big{workers}"
                wall, peak, _ = run_cli(
                    [
                        "featurize",
                        str(big),
                        "-o",
                        str(out),
                        "--fragment-length",
                        str(FRAGMENT),
                        "--quiet",
                        "--workers",
                        str(workers),
                    ]
                )
                rows.append(
                    (
                        f"cli {big_bases / 1e9:.2f} Gbp plain, {workers} worker(s)",
                        f"{big_bases / 1e6 / wall:.0f} Mbp/s",
                        f"{wall:.1f} s wall, peak RSS {peak / 2**20:.0f} MiB",
                    )
                )
                subprocess.run(["rm", "-rf", str(out)], check=True)
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'rate':>14}  detail")
    for name, rate, detail in rows:
        print(f"{name:<{width}}  {rate:>14}  {detail}")


if __name__ == "__main__":
    main()
