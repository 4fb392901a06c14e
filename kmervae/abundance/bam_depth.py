"""Per-sample read depth of every contig from BAM files, by MetaBAT's definitions.

This is what `kmervae abundance` computes and what `jgi_summarize_bam_contig_depths` (MetaBAT2)
writes: for each contig and each BAM file (one sample), the mean and the variance of the
per-base depth, counted from the aligned bases (CIGAR M, = and X) of the reads that qualify:

- mapped alignments: unmapped, secondary, QC-failed and duplicate records are ignored
  (`SKIP_FLAGS`); supplementary alignments (the other part of a split read) count, as in
  MetaBAT (measured on its binary: bench/RESULTS.md "Abundance from BAM files");
- mapping quality at least `min_mapq` (MetaBAT: 0);
- end-to-end identity at least `min_identity` (MetaBAT: 0.97), MetaBAT's `getPctId`:
  exact matches / (matches + substitutions + insertions + deletions), where substitutions =
  NM - insertions - deletions; a read without an NM tag counts as exact;
- the first and last `edge_bases` bases of a contig (MetaBAT: 75) are left out of the mean
  and the variance, where reads pile up less; a contig of at most 2 * `edge_bases` uses all
  its bases;
- the variance is the sample variance (n - 1) of the per-base depth over those bases.

BAM files are read by a compiled pass over their records (`bam_scan`); SAM and CRAM by pysam
(htslib's maintained Python binding). pysam's record loop alone ran at about 0.4 M records/s a
core, 2.5 times slower than jgi_summarize_bam_contig_depths on the same files; pycoverm
(CoverM's binding, which VAMB uses) returns means only, and MetaBAT's table also needs each
sample's variance (bench/RESULTS.md "Abundance from BAM files" has the speeds and the agreement
with MetaBAT's tool).
Files are read in parallel, one process each, as jgi_summarize_bam_contig_depths's threads do.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kmervae.base.errors import ConfigError, InputError, InputNotFoundError

SKIP_FLAGS = 0x4 | 0x100 | 0x200 | 0x400
"""Unmapped, secondary, QC fail, duplicate (SAM flags): what jgi_summarize_bam_contig_depths skips."""

_MATCH_OPS = (0, 7, 8)  # CIGAR M, =, X: bases aligned to the contig
_NM = 10  # get_cigar_stats() puts the NM tag's value after the 10 CIGAR operations


@dataclass(frozen=True)
class DepthSettings:
    """MetaBAT's defaults; each is a flag of `kmervae abundance`."""

    min_identity: float = 0.97
    edge_bases: int = 75
    min_mapq: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_identity <= 1.0:
            raise ConfigError(f"--min-identity must be between 0 and 1, got {self.min_identity}")
        if self.edge_bases < 0:
            raise ConfigError(f"--edge-bases must be >= 0, got {self.edge_bases}")
        if not 0 <= self.min_mapq <= 255:
            raise ConfigError(f"--min-mapq must be between 0 and 255, got {self.min_mapq}")


@dataclass
class SampleDepth:
    """One BAM file's depths: mean and variance per contig, in the file's reference order."""

    path: str
    contigs: list[str]
    lengths: np.ndarray  # (n,) int64
    mean: np.ndarray  # (n,) float64
    variance: np.ndarray  # (n,) float64
    records: int  # alignment records read
    counted: int  # reads that qualified and were counted
    low_identity: int  # mapped reads under min_identity or min_mapq
    seconds: float
    reference: str = ""  # digest of the contig names and lengths: files mapped to one assembly share it

    def __post_init__(self) -> None:
        if not self.reference:
            digest = hashlib.blake2b("\n".join(self.contigs).encode(), digest_size=16)
            digest.update(np.ascontiguousarray(self.lengths, dtype=np.int64).tobytes())
            self.reference = digest.hexdigest()


def finish_contig(lengths, tid: int, starts: list[int], ends: list[int], edge: int, mean, variance) -> None:
    """Mean and sample variance of contig `tid`'s depth over its middle bases, into `mean[tid]`
    and `variance[tid]`, from the aligned blocks [start, end) of its qualifying reads: the
    compiled scan's own statistics (`bam_scan.finish`) on the same depth profile."""
    from kmervae.abundance.bam_scan import finish

    length = int(lengths[tid])
    opened = np.bincount(np.minimum(np.asarray(starts, dtype=np.int64), length), minlength=length + 1)
    closed = np.bincount(np.minimum(np.asarray(ends, dtype=np.int64), length), minlength=length + 1)
    finish((opened - closed).astype(np.int32), length, edge, mean, variance, tid)


def sample_depth(path: str | os.PathLike[str], settings: DepthSettings = DepthSettings()) -> SampleDepth:
    """Depths of every contig in one coordinate-sorted BAM (or SAM/CRAM) file: BAM files by the
    compiled scan (`bam_scan`), the others by pysam."""
    from kmervae.abundance.bam_scan import is_bam, scan_bam

    if is_bam(Path(path)):
        names, lengths, mean, variance, records, counted, low, seconds = scan_bam(Path(path), settings, SKIP_FLAGS)
        return SampleDepth(str(path), names, lengths, mean, variance, records, counted, low, seconds)
    return pysam_depth(path, settings)


def pysam_depth(path: str | os.PathLike[str], settings: DepthSettings = DepthSettings()) -> SampleDepth:
    """`sample_depth` read record by record through pysam (htslib): SAM and CRAM, and BAM in the tests
    that check the compiled scan against it."""
    import pysam

    started = time.perf_counter()
    path = str(path)
    try:
        bam = pysam.AlignmentFile(path, "r", threads=2, check_sq=True)
    except (ValueError, OSError):
        raise InputError(
            f"{path}: not a readable BAM/SAM/CRAM file with contigs in its header; give the BAM files of "
            "reads mapped to the assembly"
        ) from None
    with bam:
        order = bam.header.to_dict().get("HD", {}).get("SO")
        if order not in (None, "coordinate"):
            raise InputError(f"{path}: sorted by {order}, not by coordinate; sort it with 'samtools sort'")
        contigs = list(bam.references)
        lengths = np.asarray(bam.lengths, dtype=np.int64)
        mean = np.zeros(len(contigs))
        variance = np.zeros(len(contigs))
        current, starts, ends = -1, [], []
        finished = np.zeros(len(contigs), dtype=bool)
        records = counted = low = 0
        min_identity, min_mapq = settings.min_identity, settings.min_mapq
        try:
            for read in bam.fetch(until_eof=True):
                records += 1
                if read.flag & SKIP_FLAGS:
                    continue
                tid = read.reference_id
                if tid != current:
                    if tid < current or finished[tid]:
                        raise InputError(
                            f"{path}: record {records} is out of coordinate order; sort the file with 'samtools sort'"
                        )
                    if current >= 0:
                        finish_contig(lengths, current, starts, ends, settings.edge_bases, mean, variance)
                        finished[current] = True
                    current, starts, ends = tid, [], []
                if read.mapping_quality < min_mapq:
                    low += 1
                    continue
                ops = read.get_cigar_stats()[0]
                matches = int(ops[0] + ops[7] + ops[8])
                gaps = int(ops[1] + ops[2])
                exact = matches - max(int(ops[_NM]) - gaps, 0)
                if exact < min_identity * (matches + gaps):
                    low += 1
                    continue
                counted += 1
                for start, end in read.get_blocks():
                    starts.append(start)
                    ends.append(end)
        except OSError as err:  # truncated or corrupt compression
            raise InputError(f"{path}: unreadable after record {records} ({err}); is the file complete?") from None
        if current >= 0:
            finish_contig(lengths, current, starts, ends, settings.edge_bases, mean, variance)
    return SampleDepth(path, contigs, lengths, mean, variance, records, counted, low, time.perf_counter() - started)


def check_bams(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The BAM paths, each checked to exist, once each, and with names that tell the samples apart
    (the depth table names each sample by its file's name)."""
    out = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise InputNotFoundError(f"{path}: no such BAM file")
        out.append(path)
    if not out:
        raise ConfigError("no BAM files given")
    if len({p.resolve() for p in out}) != len(out):
        raise ConfigError("the same BAM file is given twice")
    names = [p.name for p in out]
    twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if twice is not None:
        raise ConfigError(f"two BAM files are named {twice}: sample names come from file names; rename one")
    return out


def depth_column(path: str | os.PathLike[str], settings: DepthSettings, keep_names: bool) -> SampleDepth:
    """`sample_depth` as a worker returns it: without the contig names unless `keep_names` (a
    million names cost more to send back than the depths; `reference` stands for them)."""
    depth = sample_depth(path, settings)
    if not keep_names:
        depth.contigs = []
    return depth


def local_columns(workers: int) -> ColumnSource:
    """Each file's `depth_column` on `workers` processes (one file each, as
    jgi_summarize_bam_contig_depths's threads), at most twice as many files ahead of the one
    handed back, so finished files wait in memory only that long."""

    def columns(paths: Sequence[Path], settings: DepthSettings) -> Iterator[SampleDepth]:
        if workers <= 1 or len(paths) == 1:
            yield from (depth_column(path, settings, i == 0) for i, path in enumerate(paths))
            return
        with ProcessPoolExecutor(min(workers, len(paths))) as pool:
            ahead: deque[Future] = deque()
            for i, path in enumerate(paths):
                ahead.append(pool.submit(depth_column, path, settings, i == 0))
                if len(ahead) > 2 * workers:
                    yield ahead.popleft().result()
            while ahead:
                yield ahead.popleft().result()

    return columns


ColumnSource = Callable[[Sequence[Path], DepthSettings], Iterator[SampleDepth]]
"""Where the files are read: `local_columns` (processes here) or the Ray engine's tasks; each
yields the files' `depth_column`s in the order of `paths`, the first with its contig names."""


def same_reference(first: SampleDepth, other: SampleDepth) -> None:
    """Refuse a file whose reads are mapped to other contigs than the first file's."""
    if other.reference != first.reference:
        raise InputError(
            f"{other.path}: its reads are mapped to other contigs than {first.path}'s "
            f"({len(other.lengths)} and {len(first.lengths)} contigs); map every sample to the same assembly"
        )


def bam_depths(
    paths: Sequence[str | os.PathLike[str]],
    settings: DepthSettings = DepthSettings(),
    workers: int = 1,
    on_sample: Callable[[SampleDepth], None] | None = None,
) -> list[SampleDepth]:
    """Depths of every BAM file, `workers` files at a time; the files must share one reference
    (the same contigs with the same lengths in the same order), as they do when every
    sample's reads are mapped to the same assembly. `on_sample` is called as each file ends."""
    results = []
    for depth in local_columns(workers)(check_bams(paths), settings):
        if results:
            same_reference(results[0], depth)
            depth.contigs = results[0].contigs
        results.append(depth)
        if on_sample:
            on_sample(depth)
    return results
