"""Count a batch of contigs and write it as one parquet file; stage a dataset and commit it atomically.

Files go to a hidden sibling folder of the output and are moved into place only when
every file is written, so an interrupted or failed run never leaves output that looks
complete. Each file stores its k-mer counts in the narrowest width that holds them;
at commit time every file is brought to the dataset's widest width, so all files share
one schema (Ray Data and pyarrow.dataset need that).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kmervae.base.errors import InputError, OutputError
from kmervae.base.feature_contract import (
    ABUNDANCE,
    COUNT_DTYPES,
    KMER_COLUMNS,
    KMER_SIZES,
    MANIFEST_NAME,
    N_BINS,
    DatasetFormat,
    abundance_column,
    decode_counts,
    encode_counts,
    narrowest_count_dtype,
    numeric_column,
    part_name,
    string_column,
)
from kmervae.features.contigs import Batch, SkipCounts
from kmervae.features.kmer_counter import KmerCounter, copy_rows

CODECS = {
    "zstd": {"compression": "zstd", "compression_level": 1},
    "lz4": {"compression": "lz4"},
    "none": {"compression": "none"},
}
"""Parquet compression of a dataset (`--compression`). zstd level 1, the default, stores 5 kb
contigs in 2.3 KB each; lz4 writes the featurizer's output about 10% sooner for 1.85x the disk,
none 3.6x (bench/RESULTS.md). zstd at other levels is no faster (it compresses these mostly-0/1
bytes at about 450 MB/s) and higher levels gain a few percent for several times the time."""


@dataclass(frozen=True)
class PartLayout:
    """How part files are written: rows per row group and the compression."""

    row_group_size: int
    compression: str = "zstd"

    def write(self, table: pa.Table, path: Path | pa.NativeFile) -> None:
        pq.write_table(
            table,
            path,
            row_group_size=self.row_group_size,
            use_dictionary=["label"],
            write_statistics=["contig_id", "length", "gc", "label"],
            **CODECS[self.compression],
        )


COUNT_CHUNK = 256
"""Contigs counted per kernel call: small enough that the reused count buffers (8 MB)
stay warm in memory, large enough that per-call overhead vanishes."""

_local = threading.local()  # one KmerCounter per worker thread: its buffers are reused across batches


@dataclass
class PartResult:
    """What writing one batch produced."""

    index: int
    rows: int
    bases: int
    count_dtypes: dict[int, str]
    unlabeled: int = 0
    skipped: SkipCounts = field(default_factory=SkipCounts)
    no_window_ids: list[str] = field(default_factory=list)


def write_part(
    batch: Batch, directory: Path, layout: PartLayout, strict: bool, samples: tuple[str, ...] = ()
) -> PartResult:
    """Count the contigs of `batch` and write them to `directory/part-NNNNN.parquet` (with the
    `abundance` of `samples` when the batch carries depths)."""
    table, result = count_part(batch, strict, samples)
    if len(table):
        layout.write(table, directory / part_name(batch.index))
    return result


def part_bytes(
    batch: Batch, layout: PartLayout, strict: bool, samples: tuple[str, ...] = ()
) -> tuple[PartResult, bytes]:
    """`write_part`'s file as bytes (empty when no contig was kept), for a process that cannot
    write into the dataset's folder (a Ray task on another node): the same bytes."""
    table, result = count_part(batch, strict, samples)
    if not len(table):
        return result, b""
    sink = pa.BufferOutputStream()
    layout.write(table, sink)
    return result, sink.getvalue().to_pybytes()


def count_part(batch: Batch, strict: bool, samples: tuple[str, ...] = ()) -> tuple[pa.Table, PartResult]:
    """The part of `batch`: its table (the contigs kept) and what it holds."""
    counter = getattr(_local, "counter", None)
    if counter is None:
        counter = _local.counter = KmerCounter(COUNT_CHUNK)
    counted = count_batch(counter, batch, strict)
    rows, lengths = counted.rows, counted.lengths
    dtypes = {k: counted.matrices[k].dtype for k in KMER_SIZES}
    columns = {
        "contig_id": string_column([batch.contig_ids[i] for i in rows]),
        "length": numeric_column(lengths, np.int64),
        "gc": numeric_column(counted.gc, np.float32),
    }
    for k in KMER_SIZES:
        columns[KMER_COLUMNS[k]] = encode_counts(counted.matrices[k][: len(rows)], dtypes[k])
    if samples:
        columns[ABUNDANCE] = abundance_column(np.concatenate(batch.abundance)[rows])
    columns["label"] = string_column([batch.labels[i] for i in rows])
    table = pa.Table.from_pydict(columns, schema=DatasetFormat(dtypes, samples).schema())
    return table, PartResult(
        index=batch.index,
        rows=len(table),
        bases=int(lengths.sum()),
        count_dtypes={k: dtypes[k].name for k in KMER_SIZES},
        unlabeled=sum(batch.labels[i] is None for i in rows),
        skipped=counted.skipped,
        no_window_ids=counted.no_window_ids,
    )


@dataclass
class CountedBatch:
    """A batch's counts, for the contigs kept (those with a window of 7 unambiguous bases)."""

    matrices: dict[int, np.ndarray]  # k -> (at least len(rows), bins), as narrow as the counts allow
    rows: np.ndarray  # the kept contigs' positions in the batch
    lengths: np.ndarray  # (len(rows),) their lengths
    gc: np.ndarray  # (len(rows),) their GC fractions
    skipped: SkipCounts
    no_window_ids: list[str]  # the first few contigs skipped, for the message


def count_batch(counter: KmerCounter, batch: Batch, strict: bool) -> CountedBatch:
    """Count `batch` `COUNT_CHUNK` contigs at a time, straight into one matrix per k, as narrow
    as the counts allow (widened if a later chunk needs it): no per-chunk select, cast and
    concatenation. A contig with no window of 7 unambiguous bases has no 7-mer profile (0/0
    frequencies): skipped and counted, or refused with `strict`."""
    seq = batch.joined()
    starts = np.asarray(batch.starts, dtype=np.int64)
    ends = np.asarray(batch.ends, dtype=np.int64)
    matrices = {k: np.empty((len(starts), N_BINS[k]), dtype=COUNT_DTYPES[0]) for k in KMER_SIZES}
    kept = 0
    keep_rows: list[np.ndarray] = []
    gc_parts: list[np.ndarray] = []
    skipped = SkipCounts()
    no_window_ids: list[str] = []
    for lo in range(0, len(starts), COUNT_CHUNK):
        hi = min(lo + COUNT_CHUNK, len(starts))
        counts = counter.count(seq, starts[lo:hi], ends[lo:hi])
        keep = counts.windows7 > 0
        if not keep.all():
            dropped = np.flatnonzero(~keep) + lo
            skipped.no_acgt_window += len(dropped)
            skipped.no_acgt_window_bases += int((ends[dropped] - starts[dropped]).sum())
            no_window_ids.extend(batch.contig_ids[i] for i in dropped[:3])
            if strict:
                raise InputError(
                    f"contig '{batch.contig_ids[dropped[0]]}' has no window of 7 unambiguous bases "
                    "(A/C/G/T); remove it or run without --strict to skip such contigs"
                )
        for k in KMER_SIZES:
            peak = copy_rows(counts.by_k(k), keep, matrices[k], kept)
            if peak > np.iinfo(matrices[k].dtype).max:
                matrices[k] = matrices[k].astype(narrowest_count_dtype(peak))
                copy_rows(counts.by_k(k), keep, matrices[k], kept)
        kept += int(keep.sum())
        keep_rows.append(np.flatnonzero(keep) + lo)
        gc_parts.append(counts.gc_fraction[keep])
    rows = np.concatenate(keep_rows)
    return CountedBatch(matrices, rows, (ends - starts)[rows], np.concatenate(gc_parts), skipped, no_window_ids)


def widen_part(path: Path, dtypes: dict[int, np.dtype], layout: PartLayout) -> None:
    """Rewrite one part file with wider count columns."""
    path.write_bytes(widened_bytes(path.read_bytes(), dtypes, layout))


def widened_bytes(data: bytes, dtypes: dict[int, np.dtype], layout: PartLayout) -> bytes:
    """A part file (its bytes) with its count columns widened to `dtypes`. Common, not rare: one
    contig with a 7-mer seen more than 255 times (a long or low-complexity contig) makes the
    whole dataset uint16, and every other part is rewritten (on a million 1.5-50 kb contigs,
    nearly every part)."""
    table = pq.read_table(pa.BufferReader(data))
    old = DatasetFormat.from_schema(table.schema, "a part file")
    new = DatasetFormat(dtypes, old.samples)
    for k in KMER_SIZES:
        if old.count_dtypes[k] == dtypes[k]:
            continue
        name = KMER_COLUMNS[k]
        counts = decode_counts(table.column(name), N_BINS[k], old.count_dtypes[k])
        table = table.set_column(table.schema.get_field_index(name), name, encode_counts(counts, dtypes[k]))
    sink = pa.BufferOutputStream()
    layout.write(table.replace_schema_metadata(new.metadata()).cast(new.schema()), sink)
    return sink.getvalue().to_pybytes()


Widen = Callable[[list[Path], dict[int, np.dtype], PartLayout], None]
"""Rewrites part files with wider count columns (`widen_part` on each), in parallel."""


class StagedDataset:
    """An output folder built in a hidden sibling and moved into place by `commit`."""

    def __init__(self, out_dir: str | os.PathLike[str], overwrite: bool):
        self.out_dir = Path(out_dir).absolute()
        self.overwrite = overwrite
        self._check_target()
        parent = self.out_dir.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self.removed_stale = self._remove_stale(parent)
            self.staging = Path(tempfile.mkdtemp(prefix=f".{self.out_dir.name}.partial-{os.getpid()}-", dir=parent))
            umask = os.umask(0)
            os.umask(umask)
            self.staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; the dataset is not
        except OSError as err:
            raise OutputError(f"{parent}: cannot create the output folder here ({err.strerror})") from None

    def _remove_stale(self, parent: Path) -> int:
        """Delete staging folders of this output left by runs that were killed (their process
        is gone); a run still writing keeps its own. Returns how many were removed."""
        removed = 0
        for folder in parent.glob(f".{self.out_dir.name}.partial-*"):
            pid = folder.name.removeprefix(f".{self.out_dir.name}.partial-").split("-", 1)[0]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        return removed

    def _check_target(self) -> None:
        out = self.out_dir
        if not out.exists():
            return
        if not out.is_dir():
            raise OutputError(f"{out}: exists and is not a folder; choose another -o")
        entries = list(out.iterdir())
        if not entries:
            return
        if not (out / MANIFEST_NAME).exists():
            raise OutputError(f"{out}: exists and is not a kmervae feature dataset; choose another -o")
        if not self.overwrite:
            raise OutputError(f"{out}: a feature dataset exists already; pass --overwrite to replace it")

    def commit(self, parts: list[PartResult], manifest: dict, layout: PartLayout, widen: Widen | None = None) -> None:
        """Bring all parts to one width (by `widen`, in parallel; else here, one by one), write
        the manifest, and move the folder into place."""
        written = [p for p in parts if p.rows]
        widest = {
            k: max((np.dtype(p.count_dtypes[k]) for p in written), key=lambda d: d.itemsize, default=np.dtype("<u2"))
            for k in KMER_SIZES
        }
        narrow = [
            self.staging / part_name(p.index)
            for p in written
            if any(np.dtype(p.count_dtypes[k]) != widest[k] for k in KMER_SIZES)
        ]
        if widen is None:
            for path in narrow:
                widen_part(path, widest, layout)
        else:
            widen(narrow, widest, layout)
        manifest = dict(manifest, count_dtypes={KMER_COLUMNS[k]: widest[k].name for k in KMER_SIZES})
        manifest["files"] = [{"name": part_name(p.index), "rows": p.rows} for p in written]
        (self.staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        if self.out_dir.exists():
            old = self.out_dir.with_name(f".{self.out_dir.name}.old-{os.getpid()}")
            self.out_dir.rename(old)
            self.staging.rename(self.out_dir)
            shutil.rmtree(old)
        else:
            self.staging.rename(self.out_dir)

    def abort(self) -> None:
        """Remove everything written so far."""
        shutil.rmtree(self.staging, ignore_errors=True)
