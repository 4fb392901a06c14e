"""FASTA files -> feature parquet dataset: read, validate, fragment, count, write; in parallel.

One process: the main thread reads the files in blocks of records (a compiled scan that
validates the bases as it copies them, about 1 GB/s) and cuts them into batches; worker
threads count and write one parquet file per batch. The counting kernel and parquet's
compression release the GIL, so threads use every core without the start-up and copies
of worker processes (bench/RESULTS.md). At most two batches per worker are in flight,
which bounds memory whatever the input size.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm import tqdm

from kmervae import __version__
from kmervae.abundance.depth_table import AbundanceLookup
from kmervae.base.errors import ConfigError, InputError
from kmervae.base.feature_contract import SCHEMA_VERSION
from kmervae.features.contigs import Batch, Batcher, SkipCounts
from kmervae.features.fasta import check_readable, record_line
from kmervae.features.fasta_blocks import load_scanner, read_files
from kmervae.features.feature_writer import CODECS, PartLayout, PartResult, StagedDataset, widen_part, write_part
from kmervae.features.kmer_counter import count_sequence
from kmervae.features.labels import Labels


def default_workers() -> int:
    """One worker thread per available core, at most 8."""
    return max(1, min(8, len(os.sched_getaffinity(0))))


@dataclass(frozen=True)
class FeaturizeSettings:
    """How records become contigs and how the dataset is laid out."""

    fragment_length: int | None = None
    """Cut records into non-overlapping contigs of this many bases (None: one contig per record)."""
    min_length: int = 1000
    """Contigs shorter than this are skipped and counted (the last fragment of a record included)."""
    rows_per_file: int = 4096
    """Contigs per parquet file: files are the unit of parallel reads."""
    row_group_size: int = 1024
    """Contigs per row group (about 3 MB for 5 kb contigs)."""
    compression: str = "zstd"
    """Parquet compression: zstd (level 1), lz4 or none (`feature_writer.CODECS`)."""
    workers: int | None = None
    """Counting and writing threads; None: one per core (`default_workers`)."""
    strict: bool = False
    """Turn skipped contigs into errors."""
    overwrite: bool = False
    """Replace an existing feature dataset at the output path."""

    def __post_init__(self) -> None:
        if self.fragment_length is not None and self.fragment_length < 7:
            raise ConfigError(f"--fragment-length must be >= 7 (the largest k), got {self.fragment_length}")
        if self.min_length < 0:
            raise ConfigError(f"--min-length must be >= 0, got {self.min_length}")
        if self.fragment_length is not None and self.min_length > self.fragment_length:
            raise ConfigError(
                f"--min-length ({self.min_length}) is larger than --fragment-length ({self.fragment_length}): "
                "every fragment would be skipped"
            )
        if self.rows_per_file < 1:
            raise ConfigError(f"--rows-per-file must be >= 1, got {self.rows_per_file}")
        if not 1 <= self.row_group_size <= self.rows_per_file:
            raise ConfigError(
                f"--row-group-size must be between 1 and --rows-per-file ({self.rows_per_file}), got "
                f"{self.row_group_size}"
            )
        if self.compression not in CODECS:
            raise ConfigError(f"--compression must be one of {', '.join(CODECS)}, got {self.compression!r}")
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {self.workers}")


@dataclass
class FeaturizeSummary:
    """What a featurize run read, wrote and skipped."""

    out_dir: str
    files_read: int = 0
    records: int = 0
    record_bases: int = 0
    contigs: int = 0
    contig_bases: int = 0
    skipped: SkipCounts = field(default_factory=SkipCounts)
    unlabeled_contigs: int = 0
    labels_unused: int = 0
    files_written: int = 0
    output_bytes: int = 0
    seconds: float = 0.0
    workers: int = 1
    stale_removed: int = 0  # staging folders of killed earlier runs, cleaned up
    samples: int = 0  # samples of the abundance column (0: none)

    def lines(self) -> list[str]:
        """Human-readable summary, one fact per line."""
        rate = self.record_bases / 1e6 / max(self.seconds, 1e-9)
        s = self.skipped
        out = [
            f"read      {self.records:,} records ({self.record_bases / 1e6:,.2f} Mbp) from {self.files_read} file(s)",
            f"wrote     {self.contigs:,} contigs ({self.contig_bases / 1e6:,.2f} Mbp) in {self.files_written} file(s),"
            f" {self.output_bytes / 2**20:,.1f} MiB ({self.output_bytes / max(self.contigs, 1) / 1024:.2f} KiB/contig)",
            f"skipped   {s.too_short:,} contigs shorter than --min-length ({s.too_short_bases:,} bp),"
            f" {s.no_acgt_window:,} with no window of 7 unambiguous bases ({s.no_acgt_window_bases:,} bp)",
        ]
        if self.samples:
            out.append(f"abundance {self.samples} sample(s) per contig, from the depth table")
        if self.unlabeled_contigs:
            out.append(f"unlabeled {self.unlabeled_contigs:,} contigs have no label in the labels table")
        if self.labels_unused:
            out.append(f"unused    {self.labels_unused:,} entries of the labels table matched no record")
        out.append(f"took      {self.seconds:.1f} s ({rate:,.1f} Mbp/s, {self.workers} worker(s))")
        if self.stale_removed:
            out.append(f"cleaned   {self.stale_removed} partial output(s) left by an interrupted earlier run")
        out.append(f"output    {self.out_dir}")
        return out


class Parts(Protocol):
    """Where batches become part files: `PartPool` (threads here) or the Ray engine's tasks.
    `submit` may block to bound the batches in flight; `finish` returns every batch's
    `PartResult` in the order submitted, its file written into the staging folder."""

    workers: int  # batches counted at once

    def submit(self, batches: list[Batch]) -> None: ...
    def finish(self) -> list[PartResult]: ...
    def widen(self, paths: list[Path], dtypes: dict, layout: PartLayout) -> None: ...
    def cancel(self) -> None: ...
    def close(self) -> None: ...


PartsFactory = Callable[[Path, PartLayout, bool, tuple[str, ...]], Parts]
"""(staging folder, layout, strict, samples) -> the `Parts` of one run."""


def local_parts(workers: int) -> PartsFactory:
    """`workers` threads of this process writing straight into the staging folder."""
    return lambda staging, layout, strict, samples: PartPool(
        workers, lambda batch: write_part(batch, staging, layout, strict, samples)
    )


def featurize(
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    settings: FeaturizeSettings = FeaturizeSettings(),
    labels: Labels | None = None,
    progress: bool | None = None,
    abundance: AbundanceLookup | None = None,
    parts: PartsFactory | None = None,
) -> FeaturizeSummary:
    """Featurize FASTA `inputs` into the dataset folder `out_dir`; all or nothing. With
    `abundance`, every contig also gets its record's depths (a depth table of exactly these records).
    Batches are counted and written by `parts` (the Ray engine's tasks), else by
    `settings.workers` threads here; this process reads and cuts the records either way, so both
    write the same parts."""
    started = time.perf_counter()
    paths = _readable_inputs(inputs)
    labels = labels or Labels()
    sizes = [p.stat().st_size for p in paths]
    summary = FeaturizeSummary(out_dir=str(Path(out_dir).absolute()))
    samples = abundance.samples if abundance is not None else ()
    summary.samples = len(samples)
    stage = StagedDataset(out_dir, settings.overwrite)
    layout = PartLayout(settings.row_group_size, settings.compression)
    summary.stale_removed = stage.removed_stale
    bar = tqdm(
        total=sum(sizes), unit="B", unit_scale=True, desc="featurize", disable=_no_bar(progress), file=sys.stderr
    )
    pool: Parts | None = None
    stack = ExitStack()
    try:
        # made after the inputs and the output are checked: the Ray engine connects to its cluster here
        pool = (parts or local_parts(settings.workers or default_workers()))(
            stage.staging, layout, settings.strict, samples
        )
        summary.workers = pool.workers
        batcher = Batcher(settings.fragment_length, settings.min_length, settings.rows_per_file)
        # one file read at a time per 4 workers: a reading thread (scan + gzip) keeps about 4 busy
        blocks = stack.enter_context(closing(read_files(paths, -(-pool.workers // 4))))  # its threads stop with the run
        _batch_blocks(blocks, paths, sizes, batcher, labels, abundance, settings, summary, pool, bar)
        summary.files_read = len(paths)
        if abundance is not None:
            abundance.check_complete()
        pool.submit(batcher.finish())
        results = pool.finish()
        _tally(summary, results, batcher, labels, settings.min_length)
        stage.commit(results, _manifest(paths, settings, labels, summary, abundance), layout, pool.widen)
    except BaseException:
        stack.close()
        if pool is not None:
            pool.cancel()
        stage.abort()
        raise
    finally:
        stack.close()
        bar.close()
    pool.close()
    summary.files_written = sum(1 for r in results if r.rows)
    summary.output_bytes = sum(p.stat().st_size for p in Path(out_dir).iterdir())
    summary.seconds = time.perf_counter() - started
    return summary


def _batch_blocks(blocks, paths, sizes, batcher, labels, abundance, settings, summary, pool, bar) -> None:
    """Cut each block of records into contigs, with their labels and depths, and send the full
    batches to the pool; refuse the first bad record (a duplicate id, or too short with --strict)."""
    seen: dict[str, int] = {}  # record id -> the input file it came from
    done_bytes = 0  # of the files read to the end
    current = 0
    for number, block in blocks:
        if number != current:
            done_bytes += sum(sizes[current:number])
            current = number
        path = paths[number]
        ids = dict.fromkeys(block.ids, number)
        duplicate = None
        if len(ids) != len(block) or not seen.keys().isdisjoint(ids):
            duplicate = _first_duplicate(block.ids, seen)
        summary.records += len(block)
        summary.record_bases += block.bases
        depths = None
        if abundance is not None:
            depths = abundance.for_records(path, block.ids, np.diff(block.bounds))
        batches = batcher.add(block, labels.for_records(path, block.ids), depths)
        short = batcher.first_too_short if settings.strict else None
        _refuse_first_problem(paths, number, block, seen, duplicate, short, settings.min_length)
        seen.update(ids)
        pool.submit(batches)
        bar.update(done_bytes + block.raw_end - bar.n)
        bar.set_postfix_str(f"{summary.record_bases / 1e6 / max(bar.format_dict['elapsed'], 1e-9):.0f} Mbp/s")


class PartPool:
    """Parts written on `workers` threads, at most twice that many waiting (bounded memory),
    their results kept in the order the batches came."""

    def __init__(self, workers: int, write: Callable[[Batch], PartResult]):
        self.workers, self.write = workers, write
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="featurize")
        self.pending: list[Future] = []
        self.results: list[PartResult] = []

    def submit(self, batches: list[Batch]) -> None:
        for batch in batches:
            self.pending.append(self.executor.submit(self.write, batch))
            while len(self.pending) > 2 * self.workers or (self.pending and self.pending[0].done()):
                self.results.append(self.pending.pop(0).result())

    def finish(self) -> list[PartResult]:
        self.results.extend(f.result() for f in self.pending)
        self.pending.clear()
        return self.results

    def widen(self, paths: list[Path], dtypes: dict, layout: PartLayout) -> None:
        """`widen_part` on each file, on the pool's threads (parquet reads and writes release the GIL)."""
        for _ in self.executor.map(lambda path: widen_part(path, dtypes, layout), paths):
            pass

    def cancel(self) -> None:
        for future in self.pending:
            future.cancel()
        self.executor.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        self.executor.shutdown()


def _readable_inputs(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The input files as paths: at least one, each readable, none given twice."""
    paths = [Path(p) for p in inputs]
    if not paths:
        raise ConfigError("no input files given")
    for path in paths:
        check_readable(path)
    if len(set(p.resolve() for p in paths)) != len(paths):
        raise ConfigError("the same input file is given twice")
    return paths


def _refuse_first_problem(
    paths: list[Path], number: int, block, seen: dict[str, int], duplicate: int | None, short, min_length: int
) -> None:
    """Raise the error of the block's first bad record (a duplicate id, or under --strict a
    contig shorter than --min-length), as when records were read one by one."""
    path = paths[number]
    if duplicate is not None and (short is None or duplicate <= short[0]):
        rid = block.ids[duplicate]
        line = record_line(path, block.first_index + duplicate)
        first = paths[seen.get(rid, number)]
        where = "earlier in this file" if first == path else f"in {first}"
        raise InputError(f"{path}: line {line}: duplicate record id '{rid}' (also {where}); ids must be unique")
    if short is not None:
        raise InputError(
            f"{path}: contig '{short[1]}' is shorter than --min-length "
            f"({min_length}); lower --min-length or run without --strict to skip it"
        )


def _tally(summary: FeaturizeSummary, results: list[PartResult], batcher: Batcher, labels: Labels, min_length: int):
    """Count what the parts hold and what was skipped; refuse a run that kept no contig."""
    for result in results:
        summary.contigs += result.rows
        summary.contig_bases += result.bases
        summary.skipped.merge(result.skipped)
    summary.skipped.merge(batcher.skipped)
    if summary.contigs == 0:
        raise InputError(
            f"no contig left to write: {summary.skipped.too_short} shorter than --min-length "
            f"({min_length}), {summary.skipped.no_acgt_window} without a window of 7 unambiguous bases"
        )
    summary.labels_unused = labels.unused
    if labels.table is not None:
        summary.unlabeled_contigs = sum(r.unlabeled for r in results)


def load_kernels() -> None:
    """Load the compiled scanner and counter now (numba reads them from its cache: about 0.1 s)."""
    count_sequence("ACGTACG")
    load_scanner()


def _first_duplicate(ids: list[str], seen: dict[str, int]) -> int:
    """Position in `ids` of the first id seen before (earlier in `ids` or in `seen`)."""
    here: set[str] = set()
    for i, rid in enumerate(ids):
        if rid in seen or rid in here:
            return i
        here.add(rid)
    raise AssertionError("no duplicate id")


def _no_bar(progress: bool | None) -> bool | None:
    # tqdm's disable=None hides the bar when stderr is not a terminal.
    return None if progress is None else not progress


def _manifest(
    paths: list[Path],
    settings: FeaturizeSettings,
    labels: Labels,
    summary: FeaturizeSummary,
    abundance: AbundanceLookup | None,
) -> dict:
    depths = None
    if abundance is not None:
        depths = {"source": abundance.table.source, "format": abundance.table.format, "samples": abundance.samples}
    return {
        "schema_version": SCHEMA_VERSION,
        "featurizer_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "inputs": [str(p.absolute()) for p in paths],
        "settings": {
            "fragment_length": settings.fragment_length,
            "min_length": settings.min_length,
            "rows_per_file": settings.rows_per_file,
            "row_group_size": settings.row_group_size,
            "compression": settings.compression,
            "labels": "filename" if labels.from_filename else labels.source or None,
        },
        "records": summary.records,
        "record_bases": summary.record_bases,
        "contigs": summary.contigs,
        "contig_bases": summary.contig_bases,
        "skipped": asdict(summary.skipped),
        "abundance": depths,
    }
