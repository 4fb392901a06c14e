"""Read a feature parquet dataset back, checking it against the feature contract.

`FeatureTable` is the in-memory form (for evaluation, embedding small sets and tests);
`dataset_files` is what streaming readers (Ray Data) use to find and validate the files
without loading them. Both say exactly what is wrong with a foreign or corrupt dataset.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from kmervae.base.errors import InputError, InputNotFoundError
from kmervae.base.feature_contract import (
    ABUNDANCE,
    KMER_COLUMNS,
    KMER_SIZES,
    MANIFEST_NAME,
    N_BINS,
    DatasetFormat,
    decode_counts,
)


@dataclass(frozen=True)
class DatasetFiles:
    """The validated files of a dataset and their common storage format."""

    paths: tuple[Path, ...]
    format: DatasetFormat
    rows: int
    manifest: dict | None


def dataset_files(path: str | os.PathLike[str]) -> DatasetFiles:
    """Find and validate the parquet files of a feature dataset (a folder or one file)."""
    path = Path(path)
    if not path.exists():
        raise InputNotFoundError(f"{path}: no such feature dataset; create it with 'kmervae featurize'")
    manifest = None
    if path.is_dir():
        manifest_path = path / MANIFEST_NAME
        if manifest_path.exists():
            try:
                manifest = json.loads(manifest_path.read_text())
                listed = [path / entry["name"] for entry in manifest["files"]]
            except (ValueError, KeyError, TypeError) as err:
                raise InputError(f"{manifest_path}: corrupt manifest ({err}); re-run 'kmervae featurize'") from None
            missing = [p.name for p in listed if not p.exists()]
            if missing:
                raise InputError(
                    f"{path}: incomplete dataset, missing {', '.join(missing[:3])}; re-run 'kmervae featurize'"
                )
            paths = listed
        else:
            paths = sorted(p for p in path.glob("*.parquet") if not p.name.startswith((".", "_")))
        if not paths:
            raise InputError(f"{path}: no parquet files in this folder; is it a feature dataset?")
    else:
        paths = [path]
    fmt = None
    rows = 0
    for file in paths:
        try:
            meta = pq.read_metadata(file)
            schema = pq.read_schema(file)
        except (pa.ArrowInvalid, OSError) as err:
            raise InputError(f"{file}: not a readable parquet file ({err})") from None
        file_fmt = DatasetFormat.from_schema(schema, str(file))
        if fmt is not None and file_fmt.samples != fmt.samples:
            raise InputError(
                f"{file}: abundance of samples {list(file_fmt.samples)}, other files {list(fmt.samples)}; "
                "featurize the whole dataset with one depth table"
            )
        if fmt is not None and file_fmt != fmt:
            raise InputError(f"{file}: stores counts as {file_fmt.count_dtypes}, other files as {fmt.count_dtypes}")
        fmt = file_fmt
        rows += meta.num_rows
        check_values(file, len(file_fmt.samples))
    if manifest is not None:
        expected = sum(entry.get("rows", 0) for entry in manifest["files"])
        if expected != rows:
            raise InputError(
                f"{path}: files hold {rows} rows, the manifest says {expected}; re-run 'kmervae featurize'"
            )
    assert fmt is not None
    return DatasetFiles(tuple(paths), fmt, rows, manifest)


def check_values(file: Path, samples: int = 0) -> None:
    """Refuse rows no featurizer writes: GC not a finite fraction, length under one base, a
    depth (of the `samples` of the abundance column, if any) that is NaN, infinite or negative.

    Counts are unsigned by the schema, so these are the only columns that can hold NaN,
    infinities or negatives (from a foreign writer); the model would turn them into NaN
    losses far from their cause, so they are named here by contig id. A file is scanned
    once per process while it is unchanged (every reader calls dataset_files).
    """
    stat = Path(file).stat()
    _check_values(Path(file), stat.st_mtime_ns, stat.st_size, samples)


@functools.lru_cache(maxsize=4096)
def _check_values(file: Path, mtime_ns: int, size: int, samples: int) -> None:
    import pyarrow.compute as pc

    table = pq.read_table(file, columns=["length", "gc", *([ABUNDANCE] if samples else [])])
    gc, length = table.column("gc"), table.column("length")
    bad = pc.or_(
        pc.invert(pc.and_(pc.greater_equal(gc, 0.0), pc.less_equal(gc, 1.0))),  # NaN compares false
        pc.less(length, 1),
    )
    if samples:
        values = decode_abundance(table.column(ABUNDANCE), samples)
        bad = pc.or_(bad, pa.array(~(np.isfinite(values) & (values >= 0)).all(axis=1)))
    n_bad = pc.sum(bad).as_py() or 0
    if n_bad:
        rows = np.flatnonzero(bad.to_numpy(zero_copy_only=False))
        ids = pq.read_table(file, columns=["contig_id"]).column("contig_id").take(rows[:5]).to_pylist()
        shown = ", ".join(
            f"{cid} (gc={gc[int(r)].as_py()}, length={length[int(r)].as_py()})"
            for cid, r in zip(ids, rows, strict=False)
        )
        what = "gc outside [0, 1] (NaN, inf) or length < 1"
        if samples:
            what = "gc outside [0, 1] (NaN, inf), length < 1 or a depth that is NaN, inf or negative"
        raise InputError(
            f"{file}: {n_bad} row(s) with {what}, e.g. {shown}; fix or drop them, or re-run 'kmervae featurize'"
        )


def decode_inputs(table: pa.Table | pa.RecordBatch, fmt: DatasetFormat) -> dict[str, np.ndarray]:
    """The model's input columns (`MODEL_INPUTS`) of stored rows: length int64, gc float32, and
    the counts at their stored width, and the depths (float32, (rows, samples)) where the dataset
    has abundance. The one decoder every reader uses (local, Ray, embed)."""
    out = {
        "length": table.column("length").to_numpy().astype(np.int64, copy=False),
        "gc": table.column("gc").to_numpy().astype(np.float32, copy=False),
    }
    for k in KMER_SIZES:
        out[KMER_COLUMNS[k]] = decode_counts(table.column(KMER_COLUMNS[k]), N_BINS[k], fmt.count_dtypes[k])
    if fmt.samples:
        out[ABUNDANCE] = decode_abundance(table.column(ABUNDANCE), len(fmt.samples))
    return out


def decode_abundance(column: pa.Array | pa.ChunkedArray, samples: int) -> np.ndarray:
    """The `abundance` column as a (rows, samples) float32 array."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    # a copy: arrow's buffers are read-only, and torch.from_numpy wants to own what it wraps
    return np.array(column.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, samples)


@dataclass(frozen=True)
class FeatureTable:
    """Counts, GC and length of a set of contigs: one row per contig, shapes and dtypes checked."""

    contig_ids: np.ndarray  # (n,) str
    length: np.ndarray  # (n,) int64
    gc: np.ndarray  # (n,) float32
    kmer7: np.ndarray  # (n, 8192) unsigned
    kmer4: np.ndarray  # (n, 136) unsigned
    kmer3: np.ndarray  # (n, 32) unsigned
    labels: np.ndarray | None = None  # (n,) str or None per contig
    abundance: np.ndarray | None = None  # (n, samples) float32 mean depths, where the dataset has them
    samples: tuple[str, ...] = ()  # the abundance column's sample names

    def __post_init__(self) -> None:
        n = len(self.contig_ids)
        if self.length.shape != (n,) or self.length.dtype != np.int64:
            raise ValueError(f"length must be int64 of shape ({n},), got {self.length.dtype} {self.length.shape}")
        if self.gc.shape != (n,) or self.gc.dtype != np.float32:
            raise ValueError(f"gc must be float32 of shape ({n},), got {self.gc.dtype} {self.gc.shape}")
        for k in KMER_SIZES:
            counts = self.counts(k)
            if counts.shape != (n, N_BINS[k]) or counts.dtype.kind != "u":
                raise ValueError(
                    f"{KMER_COLUMNS[k]} must be unsigned of shape ({n}, {N_BINS[k]}), got {counts.dtype} {counts.shape}"
                )
        if self.labels is not None and self.labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {self.labels.shape}")
        if self.abundance is not None and self.abundance.shape != (n, len(self.samples)):
            raise ValueError(f"abundance must have shape ({n}, {len(self.samples)}), got {self.abundance.shape}")

    def __len__(self) -> int:
        return len(self.contig_ids)

    def counts(self, k: int) -> np.ndarray:
        """Count matrix of k."""
        return {7: self.kmer7, 4: self.kmer4, 3: self.kmer3}[k]

    @classmethod
    def from_arrow(cls, table: pa.Table, fmt: DatasetFormat) -> FeatureTable:
        """Decode an arrow table read from feature files of format `fmt`."""
        labels = None
        if "label" in table.column_names and table.column("label").null_count < len(table):
            labels = np.asarray(table.column("label").to_pylist(), dtype=object)
        contig_ids = np.asarray(table.column("contig_id").to_pylist(), dtype=object)
        return cls(contig_ids=contig_ids, labels=labels, samples=fmt.samples, **decode_inputs(table, fmt))

    @classmethod
    def from_parquet(cls, path: str | os.PathLike[str], rows: np.ndarray | None = None) -> FeatureTable:
        """Read and validate a feature dataset (folder or file) into memory: every row, or only
        `rows` (sorted positions in the dataset's order), picked before the counts are decoded (a
        million contigs' decoded counts would not fit in memory; a subsample's do)."""
        files = dataset_files(path)
        tables = list(_file_tables(files, rows))
        return cls.from_arrow(pa.concat_tables(tables) if len(tables) > 1 else tables[0], files.format)


def read_rows(files: DatasetFiles, rows: np.ndarray, chunk: int) -> Iterator[FeatureTable]:
    """The `rows` (sorted dataset positions) of a dataset as FeatureTables of about `chunk` rows
    each, every file read once: for passes over a million contigs' counts."""
    pending, count = [], 0
    for table in _file_tables(files, rows):
        pending.append(table)
        count += len(table)
        if count >= chunk:
            yield FeatureTable.from_arrow(pa.concat_tables(pending), files.format)
            pending, count = [], 0
    if pending:
        yield FeatureTable.from_arrow(pa.concat_tables(pending), files.format)


def _file_tables(files: DatasetFiles, rows: np.ndarray | None) -> Iterator[pa.Table]:
    """Each file's rows (all, or those of `rows`), one file's columns at a time: decompressed, a
    whole dataset is large too."""
    start = 0
    for file in files.paths:
        size = pq.ParquetFile(file).metadata.num_rows
        local = None if rows is None else rows[(rows >= start) & (rows < start + size)] - start
        if local is None or len(local):
            table = pq.read_table(file)
            yield table if local is None else table.take(pa.array(local, type=pa.int64()))
        start += size


def read_keys(files: DatasetFiles) -> tuple[np.ndarray, np.ndarray | None]:
    """Every contig's id and label (None where the dataset has no label column), in the
    dataset's order, reading only those two columns."""
    table = pa.concat_tables(
        pq.read_table(p, columns=[c for c in ("contig_id", "label") if c in pq.read_schema(p).names])
        for p in files.paths
    )
    ids = np.asarray(table.column("contig_id").to_pylist(), dtype=object)
    labels = None
    if "label" in table.column_names and table.column("label").null_count < len(table):
        labels = np.asarray(table.column("label").to_pylist(), dtype=object)
    return ids, labels


def label_vocabulary(files: DatasetFiles) -> list[str]:
    """Sorted distinct labels of a dataset (reads only the label column); [] when unlabeled."""
    labels: set[str] = set()
    for path in files.paths:
        if "label" not in pq.read_schema(path).names:
            continue
        column = pq.read_table(path, columns=["label"]).column("label")
        labels.update(v for v in pc.unique(column).to_pylist() if v is not None)
    return sorted(labels)


def has_labels(files: DatasetFiles) -> bool:
    """Whether every file of a dataset has a label column."""
    return all("label" in pq.read_schema(p).names for p in files.paths)


def contig_labels(
    features: str | os.PathLike[str], contig_ids: np.ndarray, *, every: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The one reader of embedded contigs' labels: labels (None where absent) and lengths (0 where
    absent) of `contig_ids`, from a feature dataset's id, label and length columns alone (its
    counts would not fit at scale). `every`: refuse ids the dataset lacks (embeddings of another
    dataset) instead of leaving them unlabelled."""
    files = dataset_files(features)
    no_labels = f"{features}: has no labels; featurize with --label-from-filename or --labels"
    if not has_labels(files):
        raise InputError(no_labels)
    table = pa.concat_tables(pq.read_table(p, columns=["contig_id", "label", "length"]) for p in files.paths)
    if table.column("label").null_count == len(table):
        raise InputError(no_labels)
    row = {cid: i for i, cid in enumerate(table.column("contig_id").to_pylist())}
    rows = [row.get(cid) for cid in contig_ids]
    if every and (missing := [cid for cid, i in zip(contig_ids, rows, strict=True) if i is None]):
        raise InputError(
            f"{features}: has no row for {len(missing):,} of the {len(contig_ids):,} embedded contigs "
            f"(e.g. '{missing[0]}'): the embeddings come from another dataset; "
            "give the features they were embedded from"
        )
    known_labels, known_lengths = table.column("label").to_pylist(), table.column("length").to_numpy()
    labels = np.array([None if i is None else known_labels[i] for i in rows], dtype=object)
    lengths = np.array([0 if i is None else known_lengths[i] for i in rows], dtype=np.int64)
    return labels, lengths
