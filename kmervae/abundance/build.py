"""`kmervae abundance`: many BAM files -> one depth table, with progress and a summary.

The scan of one file is `bam_depth`'s; the table's formats are `depth_table`'s. This module
joins them: it refuses an existing output before reading anything, reads the files on
`workers` processes, stacks their samples in the order given and writes the table.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kmervae.abundance.bam_depth import DepthSettings, SampleDepth, bam_depths, check_bams
from kmervae.abundance.depth_table import write_table
from kmervae.base.errors import OutputError


@dataclass(frozen=True)
class DepthTableSummary:
    """What `build_depth_table` did, for the command's closing lines."""

    out: Path
    samples: int
    contigs: int
    unread_contigs: int  # contigs with no read counted in any sample
    counted: int
    records: int
    seconds: float

    def lines(self) -> list[str]:
        return [
            f"samples   {self.samples}",
            f"contigs   {self.contigs:,} ({self.unread_contigs:,} with no read counted)",
            f"reads     {self.counted:,} counted of {self.records:,} records",
            f"took      {self.seconds:.1f} s",
            f"output    {self.out.absolute()}",
        ]


def sample_line(sample: SampleDepth) -> str:
    """One file's progress line: records read and counted, and the rate."""
    rate = sample.records / max(sample.seconds, 1e-9)
    return (
        f"  {Path(sample.path).name}: {sample.records:,} records, {sample.counted:,} reads counted, "
        f"{sample.low_identity:,} under --min-identity/--min-mapq, {sample.seconds:.1f} s ({rate:,.0f} records/s)"
    )


def build_depth_table(
    bams: Sequence[str | os.PathLike[str]],
    out: Path,
    settings: DepthSettings,
    workers: int | None = None,
    fmt: str = "metabat",
    overwrite: bool = False,
    log: Callable[[str], None] = lambda line: None,
) -> DepthTableSummary:
    """Write the depth table of `bams` (one sample each, named by file name) to `out` in `fmt`
    ("metabat" or "vamb", `depth_table.write_table`); `workers` files at once, one per core when None."""
    started = time.perf_counter()
    if out.exists() and not overwrite:
        raise OutputError(f"{out}: exists already; pass --overwrite to replace it")
    paths = check_bams(bams)
    workers = workers or max(1, len(os.sched_getaffinity(0)))
    log(f"reading   {len(paths)} BAM file(s), {min(workers, len(paths))} at a time")
    samples = bam_depths(paths, settings, workers, on_sample=lambda sample: log(sample_line(sample)))
    first = samples[0]
    means = np.stack([s.mean for s in samples], axis=1)
    variances = np.stack([s.variance for s in samples], axis=1)
    write_table(out, first.contigs, first.lengths, [p.name for p in paths], means, variances, fmt)
    return DepthTableSummary(
        out=out,
        samples=len(samples),
        contigs=len(first.contigs),
        unread_contigs=int((means.sum(axis=1) == 0).sum()),
        counted=sum(s.counted for s in samples),
        records=sum(s.records for s in samples),
        seconds=time.perf_counter() - started,
    )
