"""The feature contract: canonical k-mer tables, the parquet schema and its storage.

This module is the single source of truth shared by `kmervae.features` (which writes
features) and the model, Ray Data and `kmervae embed` (which read them). It needs only numpy
and pyarrow, so the featurizer never pulls in torch.

Canonical k-mers: a k-mer and its reverse complement are one bin, named by the
lexicographically smaller of the two; bins are in lexicographic order (A < C < G < T).
Odd k gives 4^k / 2 bins, even k gives (4^k + 4^(k/2)) / 2 (palindromes are their own
reverse complement).

Storage: each k-mer column is a `fixed_size_binary` of little-endian unsigned
integers, one value per canonical bin. The integer width (uint8, uint16 or uint32) is
the narrowest that holds every count of the dataset; it is recorded in the file
metadata and implied by the binary width. `encode_counts` / `decode_counts` hide this:
nothing else in the project touches the bytes. A fixed-width binary writes about 2x
faster than a `fixed_size_list` of integers (measured: docs/contracts.md), and counts that
do not fit a width are widened, never wrapped (see `narrowest_count_dtype`).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from kmervae.base.errors import InputError

SCHEMA_VERSION = 2
"""Bumped whenever the columns, their meaning or their storage change. Version 2 added the
optional `abundance` column and its sample names; a dataset without it is what version 1 was."""

READABLE_SCHEMA_VERSIONS = (1, 2)
"""Versions this reader accepts: version 1 is version 2 without abundance."""

BASES = "ACGT"
"""Base order of the 2-bit code (A=0, C=1, G=2, T=3): lexicographic order of k-mers
equals numeric order of their codes."""

KMER_SIZES = (7, 4, 3)
"""The k-mer sizes of the contract, largest first (the model's branch order)."""

KMER_COLUMNS = {k: f"kmer{k}" for k in KMER_SIZES}
"""Parquet column of each k."""

MODEL_INPUTS = ("length", "gc", *KMER_COLUMNS.values())
"""The stored columns every model reads, in the order of its arguments (training, export, embed)."""

ABUNDANCE = "abundance"
"""Optional column: each contig's mean read depth in each sample (fixed-size list of float32, one
value per sample, in the order of the file metadata's sample names). A model with an abundance
branch reads it after `MODEL_INPUTS`."""


def input_columns(abundance: bool) -> tuple[str, ...]:
    """The stored columns a model reads, in the order of its arguments: `MODEL_INPUTS`, then
    `abundance` for a model with an abundance branch (or data that has the column)."""
    return (*MODEL_INPUTS, ABUNDANCE) if abundance else MODEL_INPUTS


MANIFEST_NAME = "_kmervae_dataset.json"
"""Written last by the featurizer: lists the files and rows of a complete dataset."""


FRAGMENT_ID = re.compile(r"^(?P<record>.+):(?P<start>[0-9]+)-(?P<end>[0-9]+)$")
"""A fragment's contig id: `RECORD:START-END`, 1-based inclusive coordinates in the record."""


def fragment_contig_id(record_id: str, start: int, end: int) -> str:
    """The contig id of the fragment [start, end) (0-based, end exclusive) of a record."""
    return f"{record_id}:{start + 1}-{end}"


def fragment_span(contig_id: str) -> tuple[str, int, int] | None:
    """(record, start, end) of a fragment's contig id, 0-based with end exclusive: the inverse of
    `fragment_contig_id`; None for an id without coordinates (an unfragmented record)."""
    match = FRAGMENT_ID.match(contig_id)
    return None if match is None else (match["record"], int(match["start"]) - 1, int(match["end"]))


def parse_fragment(contig_id: str) -> tuple[str, int] | None:
    """(record, 1-based start) of a fragment's contig id; None for an id without coordinates
    (an unfragmented record). Fragments of one record are must-links: same genome, other bases."""
    span = fragment_span(contig_id)
    return None if span is None else (span[0], span[1] + 1)


def id_hash(name: str) -> int:
    """A 63-bit hash of a record or contig id (blake2b, not Python's salted `hash`): every
    process, rank and reader codes one id alike, so validation rows can be matched to per-contig
    tables (must-links, marker genes) without a shared vocabulary."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little") >> 1


def part_name(index: int) -> str:
    """File name of the `index`-th part of a dataset."""
    return f"part-{index:05d}.parquet"


COUNT_DTYPES = (np.dtype("<u1"), np.dtype("<u2"), np.dtype("<u4"))
"""Storage widths a k-mer column may use, narrowest first."""

KMER_ORDER = "canonical-lexicographic"
"""Name of the bin order, recorded in every file so a reader can refuse another one."""

# Key-value metadata keys written into every parquet file of a feature dataset.
META_SCHEMA_VERSION = b"kmervae.schema_version"
META_FEATURIZER_VERSION = b"kmervae.featurizer_version"
META_KMER_ORDER = b"kmervae.kmer_order"
META_COUNT_DTYPES = b"kmervae.count_dtypes"
META_ABUNDANCE_SAMPLES = b"kmervae.abundance_samples"


def n_canonical(k: int) -> int:
    """Number of canonical k-mer bins for k."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    palindromes = 4 ** (k // 2) if k % 2 == 0 else 0
    return (4**k + palindromes) // 2


N_BINS = {k: n_canonical(k) for k in KMER_SIZES}  # {7: 8192, 4: 136, 3: 32}
N_FEATURES = 1 + sum(N_BINS.values()) + 1
"""Model input width: length + 7-mers + 4-mers + 3-mers + GC = 8,362."""


def reverse_complement_code(code: int, k: int) -> int:
    """Reverse complement of a 2-bit packed k-mer (complement of base b is 3 - b)."""
    rc = 0
    for _ in range(k):
        rc = (rc << 2) | (3 - (code & 3))
        code >>= 2
    return rc


@functools.cache
def canonical_index(k: int) -> np.ndarray:
    """Map every 2-bit packed k-mer code (0 .. 4^k - 1) to its canonical bin, as int32."""
    codes = np.arange(4**k, dtype=np.int64)
    rc = np.zeros_like(codes)
    rest = codes.copy()
    for _ in range(k):
        rc = (rc << 2) | (3 - (rest & 3))
        rest >>= 2
    canonical = np.minimum(codes, rc)
    # Bins are the distinct canonical codes in increasing (= lexicographic) order.
    bins, index = np.unique(canonical, return_inverse=True)
    assert len(bins) == n_canonical(k)
    index = index.astype(np.int32)
    index.setflags(write=False)
    return index


@functools.cache
def canonical_kmers(k: int) -> tuple[str, ...]:
    """Names of the canonical bins of k, in storage order (e.g. 'AAAAAAA', ...)."""
    index = canonical_index(k)
    first_code = np.full(n_canonical(k), -1, dtype=np.int64)
    for code in range(4**k - 1, -1, -1):  # smallest code of each bin wins
        first_code[index[code]] = code
    return tuple("".join(BASES[(int(code) >> (2 * (k - 1 - i))) & 3] for i in range(k)) for code in first_code)


def kmer_names(k: int) -> tuple[str, ...]:
    """All 4^k k-mers in lexicographic order (used by tests and plots)."""
    return tuple("".join(p) for p in itertools.product(BASES, repeat=k))


def narrowest_count_dtype(max_count: int) -> np.dtype:
    """The narrowest storage dtype that holds `max_count` exactly."""
    for dtype in COUNT_DTYPES:
        if max_count <= np.iinfo(dtype).max:
            return dtype
    raise InputError(f"a k-mer count of {max_count} does not fit in uint32: split the sequence with --fragment-length")


def encode_counts(counts: np.ndarray, dtype: np.dtype) -> pa.FixedSizeBinaryArray:
    """Pack a (rows, bins) array of counts into a fixed_size_binary column of `dtype`."""
    assert counts.ndim == 2, counts.shape
    dtype = np.dtype(dtype).newbyteorder("<")
    if counts.size and int(counts.max()) > np.iinfo(dtype).max:
        raise OverflowError(f"count {int(counts.max())} does not fit {dtype.name}")
    data = np.ascontiguousarray(counts, dtype=dtype)  # no copy when already packed
    width = counts.shape[1] * dtype.itemsize
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(counts), [None, pa.py_buffer(data)])


# Columns are built from their buffers: `pa.array` asks whether its input is a pandas object,
# which imports pandas (0.1 s) in the featurizer's every process; these never do.


def string_column(values: list[str | None]) -> pa.StringArray:
    """A string column (None: null) built from its buffers."""
    encoded = [b"" if v is None else v.encode() for v in values]
    offsets = np.zeros(len(values) + 1, dtype=np.int32)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    nulls = np.fromiter((v is None for v in values), dtype=bool, count=len(values))
    validity = pa.py_buffer(np.packbits(~nulls, bitorder="little")) if nulls.any() else None
    buffers = [validity, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))]
    return pa.Array.from_buffers(pa.string(), len(values), buffers, null_count=int(nulls.sum()))


def numeric_column(values: np.ndarray, dtype: np.dtype | type) -> pa.Array:
    """A fixed-width numeric column (no nulls) of numpy `dtype` (little-endian, as parquet stores it)."""
    data = np.ascontiguousarray(values, dtype=np.dtype(dtype).newbyteorder("<"))
    return pa.Array.from_buffers(pa.from_numpy_dtype(data.dtype), len(data), [None, pa.py_buffer(data)])


def abundance_column(depths: np.ndarray) -> pa.FixedSizeListArray:
    """The `abundance` column of a (rows, samples) array of mean depths."""
    values = numeric_column(np.asarray(depths, dtype=np.float32).reshape(-1), np.float32)
    return pa.FixedSizeListArray.from_arrays(values, depths.shape[1])


def decode_counts(column: pa.Array | pa.ChunkedArray, bins: int, dtype: np.dtype) -> np.ndarray:
    """Unpack a fixed_size_binary k-mer column into a read-only (rows, bins) array."""
    if isinstance(column, pa.ChunkedArray):
        if column.num_chunks == 1:
            return decode_counts(column.chunk(0), bins, dtype)
        return np.concatenate([decode_counts(c, bins, dtype) for c in column.chunks])
    dtype = np.dtype(dtype).newbyteorder("<")
    width = bins * dtype.itemsize
    if column.type != pa.binary(width):
        raise InputError(f"k-mer column has type {column.type}, expected fixed_size_binary[{width}]")
    if column.null_count:
        raise InputError(f"k-mer column has {column.null_count} null rows")
    buffer = column.buffers()[1]
    values = np.frombuffer(buffer, dtype=dtype, count=(column.offset + len(column)) * bins)
    return values.reshape(-1, bins)[column.offset :]


@dataclass(frozen=True)
class DatasetFormat:
    """What a reader needs to decode a feature file: the storage dtype of each k-mer column."""

    count_dtypes: Mapping[int, np.dtype]
    samples: tuple[str, ...] = ()
    """Sample names of the `abundance` column; empty when the dataset has none."""

    @property
    def input_columns(self) -> tuple[str, ...]:
        """The stored columns a model of this dataset can read: `MODEL_INPUTS`, then `abundance`."""
        return input_columns(bool(self.samples))

    def schema(self) -> pa.Schema:
        """The parquet schema of a feature file, with its key-value metadata."""
        fields = [
            pa.field("contig_id", pa.string(), nullable=False),
            pa.field("length", pa.int64(), nullable=False),
            pa.field("gc", pa.float32(), nullable=False),
        ]
        for k in KMER_SIZES:
            width = N_BINS[k] * self.count_dtypes[k].itemsize
            fields.append(pa.field(KMER_COLUMNS[k], pa.binary(width), nullable=False))
        if self.samples:
            fields.append(pa.field(ABUNDANCE, pa.list_(pa.float32(), len(self.samples)), nullable=False))
        fields.append(pa.field("label", pa.string(), nullable=True))
        return pa.schema(fields, metadata=self.metadata())

    def metadata(self) -> dict[bytes, bytes]:
        """Key-value metadata recording version, bin order and storage widths."""
        from kmervae import __version__

        order = {KMER_COLUMNS[k]: {"k": k, "bins": N_BINS[k], "order": KMER_ORDER} for k in KMER_SIZES}
        dtypes = {KMER_COLUMNS[k]: self.count_dtypes[k].name for k in KMER_SIZES}
        meta = {
            META_SCHEMA_VERSION: str(SCHEMA_VERSION).encode(),
            META_FEATURIZER_VERSION: __version__.encode(),
            META_KMER_ORDER: json.dumps(order, sort_keys=True).encode(),
            META_COUNT_DTYPES: json.dumps(dtypes, sort_keys=True).encode(),
        }
        if self.samples:
            meta[META_ABUNDANCE_SAMPLES] = json.dumps(list(self.samples)).encode()
        return meta

    @classmethod
    def from_schema(cls, schema: pa.Schema, where: str) -> DatasetFormat:
        """Check a file's schema and metadata against the contract; say what is wrong."""
        meta = schema.metadata or {}
        if META_SCHEMA_VERSION not in meta:
            raise InputError(
                f"{where}: not a kmervae feature file (no {META_SCHEMA_VERSION.decode()} metadata); "
                "create it with 'kmervae featurize'"
            )
        version = meta[META_SCHEMA_VERSION].decode()
        if version not in {str(v) for v in READABLE_SCHEMA_VERSIONS}:
            raise InputError(
                f"{where}: feature schema version {version}, this kmervae reads versions "
                f"{', '.join(map(str, READABLE_SCHEMA_VERSIONS))}; re-run 'kmervae featurize' with this version"
            )
        try:
            order = json.loads(meta[META_KMER_ORDER])
            dtypes = json.loads(meta[META_COUNT_DTYPES])
            samples = tuple(json.loads(meta.get(META_ABUNDANCE_SAMPLES, b"[]")))
        except (KeyError, ValueError) as err:
            raise InputError(f"{where}: corrupt kmervae metadata ({err}); re-run 'kmervae featurize'") from None
        count_dtypes = {}
        for k in KMER_SIZES:
            name = KMER_COLUMNS[k]
            expected = {"k": k, "bins": N_BINS[k], "order": KMER_ORDER}
            if order.get(name) != expected:
                raise InputError(f"{where}: column {name} has k-mer order {order.get(name)}, expected {expected}")
            if dtypes.get(name) not in {d.name for d in COUNT_DTYPES}:
                raise InputError(f"{where}: column {name} has unsupported count dtype {dtypes.get(name)!r}")
            count_dtypes[k] = np.dtype(dtypes[name]).newbyteorder("<")
        fmt = cls(count_dtypes, samples)
        expected_schema = fmt.schema()
        for field in expected_schema:
            if field.name == "label" and field.name not in schema.names:
                continue  # label is optional
            if field.name not in schema.names:
                raise InputError(f"{where}: missing column {field.name!r} (expected {field.type})")
            actual = schema.field(field.name).type
            if actual != field.type:
                raise InputError(f"{where}: column {field.name!r} has type {actual}, expected {field.type}")
        return fmt
