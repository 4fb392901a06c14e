"""Fragmenting records into contigs and grouping contigs into batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kmervae.base.feature_contract import parse_fragment
from kmervae.features.contigs import Batcher, contig_id, fragments
from kmervae.features.fasta_blocks import RecordBlock


def block(*records: tuple[str, str], first: int = 0) -> RecordBlock:
    bounds = np.cumsum([0, *(len(seq) for _, seq in records)])
    seq = np.frombuffer("".join(seq for _, seq in records).encode(), np.uint8)
    return RecordBlock(Path("x.fa"), first, seq, bounds, [rid for rid, _ in records], len(seq))


def one_record(length: int, fragment_length: int | None) -> tuple[np.ndarray, np.ndarray]:
    _, starts, ends = fragments(np.array([length]), fragment_length)
    return starts, ends


def test_fragment_bounds_cover_the_record_without_overlap():
    starts, ends = one_record(12_345, 5000)
    assert starts.tolist() == [0, 5000, 10_000]
    assert ends.tolist() == [5000, 10_000, 12_345]
    assert one_record(12_345, None)[1].tolist() == [12_345]
    assert one_record(0, 5000)[1].tolist() == [0]


def test_fragments_of_many_records_match_one_record_at_a_time():
    lengths = np.array([12_345, 0, 5000, 4999, 5001, 1])
    record, starts, ends = fragments(lengths, 5000)
    for r, length in enumerate(lengths):
        one_starts, one_ends = one_record(int(length), 5000)
        assert starts[record == r].tolist() == one_starts.tolist()
        assert ends[record == r].tolist() == one_ends.tolist()
    assert fragments(lengths, None)[2].tolist() == lengths.tolist()


def test_contig_ids_use_one_based_inclusive_coordinates():
    assert contig_id("chr1", 0, 5000, fragmented=True) == "chr1:1-5000"
    assert contig_id("chr1", 5000, 7000, fragmented=True) == "chr1:5001-7000"
    assert contig_id("chr1", 0, 7000, fragmented=False) == "chr1"


def test_fragment_ids_parse_back_to_their_record_and_start():
    assert parse_fragment(contig_id("chr1", 5000, 7000, fragmented=True)) == ("chr1", 5001)
    # a record id with colons of its own (labelled genomes: "GENOME|RECORD") keeps them
    assert parse_fragment("E_coli|NC_000913.3:x:10001-15000") == ("E_coli|NC_000913.3:x", 10001)
    assert parse_fragment(contig_id("chr1", 0, 7000, fragmented=False)) is None
    assert parse_fragment("chr1:5-") is None


def collect(batcher: Batcher, blocks: list[RecordBlock]) -> list:
    batches = []
    for b in blocks:
        batches += batcher.add(b, [rid.upper() for rid in b.ids])
    return batches + batcher.finish()


def test_batches_hold_the_right_bases_and_skip_short_tails():
    seq = "".join(np.random.default_rng(0).choice(list("ACGT"), 2350))
    batcher = Batcher(fragment_length=1000, min_length=400, rows=2)
    batches = collect(batcher, [block(("a", seq), ("b", "ACGT" * 50))])
    ids = [cid for b in batches for cid in b.contig_ids]
    assert ids == ["a:1-1000", "a:1001-2000"]  # a's 350 bp tail and all of b (200 bp) are too short
    assert batcher.skipped.too_short == 2 and batcher.skipped.too_short_bases == 550
    assert batches[0].labels == ["A", "A"]
    joined = batches[0].joined()
    for start, end, (s, e) in zip(batches[0].starts, batches[0].ends, [(0, 1000), (1000, 2000)], strict=True):
        assert joined[start:end].tobytes().decode() == seq[s:e]


def test_a_long_record_is_spread_over_batches_and_carries_only_its_slice():
    seq = "".join(np.random.default_rng(1).choice(list("ACGT"), 10_000))
    batches = collect(Batcher(fragment_length=1000, min_length=1, rows=3), [block(("big", seq))])
    assert [len(b) for b in batches] == [3, 3, 3, 1]
    assert [b.index for b in batches] == [0, 1, 2, 3]
    assert batches[1].bases == 3000 and batches[1].contig_ids[0] == "big:3001-4000"
    assert batches[1].joined().tobytes().decode() == seq[3000:6000]


def test_batches_close_on_a_base_budget_too():
    records = [(f"r{i}", "ACGT" * 250) for i in range(5)]
    batches = collect(Batcher(fragment_length=None, min_length=1, rows=100, max_bases=2000), [block(*records)])
    assert [len(b) for b in batches] == [2, 2, 1]
    # the same records in blocks of one and two give the same batches
    split = collect(Batcher(None, 1, 100, 2000), [block(records[0]), block(*records[1:3]), block(*records[3:])])
    assert [b.contig_ids for b in split] == [b.contig_ids for b in batches]


def test_skipped_contigs_between_kept_ones_are_not_carried():
    records = [("a", "A" * 1500), ("short", "C" * 500), ("b", "G" * 1200)]
    (batch,) = collect(Batcher(fragment_length=None, min_length=1000, rows=10), [block(*records)])
    assert batch.contig_ids == ["a", "b"] and batch.labels == ["A", "B"]
    assert batch.bases == 2700 and len(batch.pieces) == 2  # the short record's bases are left out
    joined = batch.joined().tobytes().decode()
    assert [joined[s:e] for s, e in zip(batch.starts, batch.ends, strict=True)] == ["A" * 1500, "G" * 1200]
