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

from kmervae.abundance.bam_depth import (
    ColumnSource,
    DepthSettings,
    SampleDepth,
    check_bams,
    local_columns,
    same_reference,
)
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


def sample_line(sample: SampleDepth, done: int, files: int) -> str:
    """One file's progress line: records read and counted, and the rate."""
    rate = sample.records / max(sample.seconds, 1e-9)
    return (
        f"  [{done}/{files}] {Path(sample.path).name}: {sample.records:,} records, {sample.counted:,} reads counted, "
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
    columns: ColumnSource | None = None,
) -> DepthTableSummary:
    """Write the depth table of `bams` (one sample each, named by file name) to `out` in `fmt`
    ("metabat" or "vamb", `depth_table.write_table`). The files are read by `columns` (the Ray
    engine's tasks), else `workers` at once here, one per core when None. Each file's depths go
    into the table's float32 columns as it arrives and the file's result is dropped, so memory
    is the table (8 bytes a contig and sample) and the files in flight."""
    started = time.perf_counter()
    if out.exists() and not overwrite:
        raise OutputError(f"{out}: exists already; pass --overwrite to replace it")
    paths = check_bams(bams)
    if columns is None:
        workers = workers or max(1, len(os.sched_getaffinity(0)))
        log(f"reading   {len(paths)} BAM file(s), {min(workers, len(paths))} at a time")
        columns = local_columns(workers)
    first = None
    counted = records = 0
    for j, sample in enumerate(columns(paths, settings)):
        if first is None:
            first = sample
            means = np.empty((len(sample.lengths), len(paths)), dtype=np.float32)
            variances = np.empty_like(means)
        same_reference(first, sample)
        means[:, j], variances[:, j] = sample.mean, sample.variance
        counted, records = counted + sample.counted, records + sample.records
        log(sample_line(sample, j + 1, len(paths)))
    write_table(out, first.contigs, first.lengths, [p.name for p in paths], means, variances, fmt)
    return DepthTableSummary(
        out=out,
        samples=len(paths),
        contigs=len(first.lengths),
        unread_contigs=int((means.sum(axis=1) == 0).sum()),
        counted=counted,
        records=records,
        seconds=time.perf_counter() - started,
    )
