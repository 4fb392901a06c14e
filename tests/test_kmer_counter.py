"""The compiled counting kernel against the slow reference, on random and real sequences."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kmervae.base.feature_contract import KMER_SIZES
from kmervae.features.kmer_counter import BASE_CLASS, KmerCounter, count_sequence, first_invalid_byte
from tests.reference import reference_counts, reference_gc

# Mostly bases, with runs of N, other IUPAC codes, lower case and U mixed in.
ALPHABET = "ACGTACGTACGTacgtNNnRYKMSWBDHVU"
sequences = st.text(alphabet=ALPHABET, min_size=0, max_size=400)


def assert_matches_reference(sequence: str, counts, row: int = 0) -> None:
    for k in KMER_SIZES:
        np.testing.assert_array_equal(counts.by_k(k)[row], reference_counts(sequence, k), err_msg=f"k={k}")
    expected_gc = reference_gc(sequence)
    actual_gc = counts.gc_fraction[row]
    if np.isnan(expected_gc):
        assert np.isnan(actual_gc)
    else:
        assert actual_gc == pytest.approx(expected_gc, rel=1e-6)


@settings(max_examples=300, deadline=None)
@given(sequences)
def test_counts_match_reference_on_random_sequences(sequence):
    assert_matches_reference(sequence, count_sequence(sequence))


@settings(max_examples=50, deadline=None)
@given(st.lists(sequences, min_size=1, max_size=8))
def test_batched_counts_equal_one_by_one_and_reuse_buffers(parts):
    joined = "".join(parts).encode()
    bounds = np.cumsum([0] + [len(p) for p in parts])
    counter = KmerCounter(capacity=2)  # smaller than the batch: must grow
    buf = np.frombuffer(joined, dtype=np.uint8)
    counter.count(buf, bounds[:-1], bounds[1:])  # dirty the buffers first
    counts = counter.count(buf, bounds[:-1], bounds[1:])
    for row, part in enumerate(parts):
        assert_matches_reference(part, counts, row)


def test_sequences_shorter_than_k_have_no_windows():
    for seq in ["", "A", "AC", "ACG", "ACGTAC"]:
        counts = count_sequence(seq)
        assert counts.kmer7.sum() == 0
        assert counts.kmer3.sum() == max(0, len(seq) - 2)
        assert counts.kmer4.sum() == max(0, len(seq) - 3)


def test_window_totals_and_reverse_complement_symmetry():
    rng = np.random.default_rng(0)
    seq = "".join(rng.choice(list("ACGT"), 5000))
    rc = seq[::-1].translate(str.maketrans("ACGT", "TGCA"))
    forward, backward = count_sequence(seq), count_sequence(rc)
    for k in KMER_SIZES:
        assert forward.by_k(k).sum() == len(seq) - k + 1
        np.testing.assert_array_equal(forward.by_k(k), backward.by_k(k))


def test_counts_match_reference_on_a_real_genome(examples_dir):
    with gzip.open(examples_dir / "Phage_Agate_metagenomic.fna.gz", "rt") as handle:
        sequence = "".join(line.strip() for line in handle if not line.startswith(">"))
    assert len(sequence) == 179_382
    assert_matches_reference(sequence, count_sequence(sequence))


@pytest.mark.parametrize(
    "data, position", [(b"ACG T", 3), (b"ACGX", 3), (b"AC-G", 2), (b"*", 0), (b"A\xff", 1), (b"ACGT1", 4)]
)
def test_first_invalid_byte_flags_non_iupac(data, position):
    assert first_invalid_byte(np.frombuffer(data, np.uint8), BASE_CLASS) == position


def test_every_iupac_code_is_valid():
    assert first_invalid_byte(np.frombuffer(b"ACGTNRYKMSWBDHVUacgtnrykmswbdhvu", np.uint8), BASE_CLASS) == -1
