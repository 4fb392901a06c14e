"""The feature contract: canonical tables, storage encoding and schema validation."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pytest

from kmervae.base.errors import InputError
from kmervae.base.feature_contract import (
    KMER_SIZES,
    N_BINS,
    N_FEATURES,
    DatasetFormat,
    canonical_index,
    canonical_kmers,
    decode_counts,
    encode_counts,
    n_canonical,
    narrowest_count_dtype,
    reverse_complement_code,
)
from tests.reference import canonical_bins, revcomp


def test_bin_counts_follow_the_formula_and_the_seed_layout():
    assert [n_canonical(k) for k in (1, 2, 3, 4, 5, 6, 7)] == [2, 10, 32, 136, 512, 2080, 8192]
    assert N_BINS == {7: 8192, 4: 136, 3: 32}
    assert N_FEATURES == 8362
    with pytest.raises(ValueError):
        n_canonical(0)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 7])
def test_canonical_index_matches_string_reference(k):
    reference = canonical_bins(k)
    names = canonical_kmers(k)
    index = canonical_index(k)
    assert len(names) == n_canonical(k)
    assert list(names) == sorted(names), "bins must be in lexicographic order"
    for name in names:
        assert name <= revcomp(name), f"{name} is not the smaller of the pair"
    for code, kmer in enumerate("".join(p) for p in itertools.product("ACGT", repeat=k)):
        assert index[code] == reference[kmer], kmer


def test_reverse_complement_code():
    # ACGTTTA (0,1,2,3,3,3,0) -> TAAACGT
    code = int("".join(str(b) for b in (0, 1, 2, 3, 3, 3, 0)), 4)
    expected = int("".join(str(b) for b in (3, 0, 0, 0, 1, 2, 3)), 4)
    assert reverse_complement_code(code, 7) == expected


@pytest.mark.parametrize("dtype", ["<u1", "<u2", "<u4"])
def test_encode_decode_round_trip_including_slices(dtype):
    rng = np.random.default_rng(1)
    high = np.iinfo(dtype).max
    counts = rng.integers(0, high, size=(37, 136), endpoint=True).astype(np.uint64)
    column = encode_counts(counts, np.dtype(dtype))
    assert column.type == pa.binary(136 * np.dtype(dtype).itemsize)
    np.testing.assert_array_equal(decode_counts(column, 136, np.dtype(dtype)), counts)
    np.testing.assert_array_equal(decode_counts(column.slice(5, 10), 136, np.dtype(dtype)), counts[5:15])
    chunked = pa.chunked_array([column.slice(0, 7), column.slice(7)])
    np.testing.assert_array_equal(decode_counts(chunked, 136, np.dtype(dtype)), counts)


def test_counts_never_wrap():
    assert narrowest_count_dtype(255) == np.dtype("<u1")
    assert narrowest_count_dtype(256) == np.dtype("<u2")
    assert narrowest_count_dtype(65536) == np.dtype("<u4")
    with pytest.raises(InputError, match="does not fit in uint32"):
        narrowest_count_dtype(2**32)
    with pytest.raises(OverflowError):
        encode_counts(np.array([[256]]), np.dtype("<u1"))


def _format(width="<u2"):
    return DatasetFormat({k: np.dtype(width) for k in KMER_SIZES})


def test_schema_round_trips_through_its_metadata():
    fmt = DatasetFormat({7: np.dtype("<u1"), 4: np.dtype("<u2"), 3: np.dtype("<u4")})
    assert DatasetFormat.from_schema(fmt.schema(), "x") == fmt
    assert fmt.schema().field("kmer7").type == pa.binary(8192)


def test_schema_without_label_is_accepted():
    schema = _format().schema()
    schema = schema.remove(schema.get_field_index("label"))
    assert DatasetFormat.from_schema(schema, "x") == _format()


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda s: s.remove_metadata(), "not a kmervae feature file"),
        (lambda s: s.with_metadata({**s.metadata, b"kmervae.schema_version": b"99"}), "schema version 99"),
        (lambda s: s.with_metadata({**s.metadata, b"kmervae.count_dtypes": b"{"}), "corrupt kmervae metadata"),
        (lambda s: s.remove(s.get_field_index("gc")), "missing column 'gc'"),
        (lambda s: s.set(s.get_field_index("kmer4"), pa.field("kmer4", pa.binary(10))), "column 'kmer4' has type"),
        (
            lambda s: s.with_metadata(
                {**s.metadata, b"kmervae.count_dtypes": b'{"kmer7": "int8", "kmer4": "uint16", "kmer3": "uint16"}'}
            ),
            "unsupported count dtype",
        ),
        (
            lambda s: s.with_metadata(
                {**s.metadata, b"kmervae.kmer_order": b'{"kmer7": {"k": 7, "bins": 16384, "order": "all"}}'}
            ),
            "k-mer order",
        ),
    ],
)
def test_foreign_or_corrupt_schema_is_refused_with_the_reason(mutate, message):
    with pytest.raises(InputError, match=message):
        DatasetFormat.from_schema(mutate(_format().schema()), "file.parquet")
