"""Fragmenting records into contigs and grouping contigs into batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data_pipeline.contigs import Batcher, contig_id, fragment_bounds
from data_pipeline.fasta import FastaRecord
from kmervae.core.feature_contract import parse_fragment


def record(rid: str, seq: str, index: int = 0) -> FastaRecord:
    return FastaRecord(Path("x.fa"), index, rid, np.frombuffer(seq.encode(), np.uint8))


def test_fragment_bounds_cover_the_record_without_overlap():
    starts, ends = fragment_bounds(12_345, 5000)
    assert starts.tolist() == [0, 5000, 10_000]
    assert ends.tolist() == [5000, 10_000, 12_345]
    assert fragment_bounds(12_345, None)[1].tolist() == [12_345]
    assert fragment_bounds(0, 5000)[1].tolist() == [0]


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


def collect(batcher: Batcher, records) -> list:
    batches = []
    for rec in records:
        batches += batcher.add(rec, label=rec.id.upper())
    return batches + batcher.finish()


def test_batches_hold_the_right_bases_and_skip_short_tails():
    seq = "".join(np.random.default_rng(0).choice(list("ACGT"), 2350))
    batcher = Batcher(fragment_length=1000, min_length=400, rows=2)
    batches = collect(batcher, [record("a", seq), record("b", "ACGT" * 50, 1)])
    ids = [cid for b in batches for cid in b.contig_ids]
    assert ids == ["a:1-1000", "a:1001-2000"]  # a's 350 bp tail and all of b (200 bp) are too short
    assert batcher.skipped.too_short == 2 and batcher.skipped.too_short_bases == 550
    assert batches[0].labels == ["A", "A"]
    joined = batches[0].joined()
    for start, end, (s, e) in zip(batches[0].starts, batches[0].ends, [(0, 1000), (1000, 2000)], strict=True):
        assert joined[start:end].tobytes().decode() == seq[s:e]


def test_a_long_record_is_spread_over_batches_and_carries_only_its_slice():
    seq = "".join(np.random.default_rng(1).choice(list("ACGT"), 10_000))
    batches = collect(Batcher(fragment_length=1000, min_length=1, rows=3), [record("big", seq)])
    assert [len(b) for b in batches] == [3, 3, 3, 1]
    assert [b.index for b in batches] == [0, 1, 2, 3]
    assert batches[1].bases == 3000 and batches[1].contig_ids[0] == "big:3001-4000"
    assert batches[1].joined().tobytes().decode() == seq[3000:6000]


def test_batches_close_on_a_base_budget_too():
    records = [record(f"r{i}", "ACGT" * 250, i) for i in range(5)]
    batches = collect(Batcher(fragment_length=None, min_length=1, rows=100, max_bases=2000), records)
    assert [len(b) for b in batches] == [2, 2, 1]
