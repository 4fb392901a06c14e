"""Cut records into contigs and group contigs into batches, one batch per output file.

A batch carries only the bases of its contigs (slices of the blocks' buffers), and a
huge record is spread over several batches.
Batch boundaries depend only on the input and the settings, never on the number of
workers, so the output is the same for any `--workers`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kmervae.base.feature_contract import fragment_contig_id
from kmervae.features.fasta_blocks import RecordBlock


def fragments(lengths: np.ndarray, fragment_length: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The non-overlapping fragments of records of `lengths`: (record, start, end) of each, in
    order, offsets within the record; one contig per record when not fragmenting (an empty
    record gives one empty contig, which the length filter counts)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if fragment_length is None:
        return np.arange(len(lengths)), np.zeros(len(lengths), dtype=np.int64), lengths
    per_record = np.maximum(-(-lengths // fragment_length), 1)
    record = np.repeat(np.arange(len(lengths)), per_record)
    first = np.cumsum(per_record) - per_record
    starts = (np.arange(len(record)) - first[record]) * fragment_length
    return record, starts, np.minimum(starts + fragment_length, lengths[record])


def contig_id(record_id: str, start: int, end: int, fragmented: bool) -> str:
    """`RECORD` or, for a fragment, `RECORD:START-END` with 1-based inclusive coordinates."""
    return fragment_contig_id(record_id, start, end) if fragmented else record_id


@dataclass
class Batch:
    """Contigs bound for one output file: their bases, bounds, ids and labels."""

    index: int
    pieces: list[np.ndarray] = field(default_factory=list)  # uint8 runs of bases, each holding whole contigs
    starts: list[int] = field(default_factory=list)  # contig bounds in the joined pieces
    ends: list[int] = field(default_factory=list)
    contig_ids: list[str] = field(default_factory=list)
    labels: list[str | None] = field(default_factory=list)
    abundance: list[np.ndarray] = field(default_factory=list)  # (contigs, samples) float32 parts, with depths
    bases: int = 0  # bases of its contigs
    _joined: int = 0  # length of the joined pieces

    def __len__(self) -> int:
        return len(self.contig_ids)

    def add(
        self,
        seq: np.ndarray,
        starts: np.ndarray,
        ends: np.ndarray,
        ids: list[str],
        labels: list,
        abundance: np.ndarray | None = None,
    ) -> None:
        """Add contigs lying in `seq` at `starts`/`ends` (in order, not overlapping), with their
        labels and depths. Each run of adjacent contigs becomes one piece, so the bases of skipped
        contigs between them are left out."""
        cut = np.flatnonzero(starts[1:] != ends[:-1]) + 1
        run_lo = starts[np.r_[0, cut]]
        run_hi = ends[np.r_[cut - 1, len(ends) - 1]]
        run_size = run_hi - run_lo
        run_of = np.repeat(np.arange(len(cut) + 1), np.diff(np.r_[0, cut, len(starts)]))
        shift = (self._joined + np.cumsum(run_size) - run_size - run_lo)[run_of]
        self.starts.extend((starts + shift).tolist())
        self.ends.extend((ends + shift).tolist())
        self.pieces.extend(seq[lo:hi] for lo, hi in zip(run_lo.tolist(), run_hi.tolist(), strict=True))
        self.contig_ids.extend(ids)
        self.labels.extend(labels)
        if abundance is not None:
            self.abundance.append(abundance)
        self.bases += int((ends - starts).sum())
        self._joined += int(run_size.sum())

    def joined(self) -> np.ndarray:
        """All bases of the batch in one buffer (what the counting kernel reads)."""
        return np.concatenate(self.pieces) if len(self.pieces) != 1 else self.pieces[0]


@dataclass
class SkipCounts:
    """Contigs not written, by reason, with their bases (nothing is dropped silently)."""

    too_short: int = 0
    too_short_bases: int = 0
    no_acgt_window: int = 0
    no_acgt_window_bases: int = 0

    def merge(self, other: SkipCounts) -> None:
        """Add another count to this one."""
        self.too_short += other.too_short
        self.too_short_bases += other.too_short_bases
        self.no_acgt_window += other.no_acgt_window
        self.no_acgt_window_bases += other.no_acgt_window_bases


class Batcher:
    """Turns blocks of records into full batches of at most `rows` contigs or `max_bases` bases.

    Contigs fill a batch in input order; a batch closes when it holds `rows` contigs or
    `max_bases` bases, so the boundaries depend on the input alone.
    """

    def __init__(self, fragment_length: int | None, min_length: int, rows: int, max_bases: int = 64_000_000):
        self.fragment_length = fragment_length
        self.min_length = min_length
        self.rows = rows
        self.max_bases = max_bases
        self.skipped = SkipCounts()
        self.first_too_short: tuple[int, str] | None = None  # of the last block: (record in it, contig id)
        self._current = Batch(0)

    def add(self, block: RecordBlock, labels: list[str | None], abundance: np.ndarray | None = None) -> list[Batch]:
        """Add the contigs of a block's records (`labels`: one per record; `abundance`: the records'
        depths, (records, samples), which every fragment of a record shares); return the batches completed."""
        record, lo, hi = fragments(np.diff(block.bounds), self.fragment_length)
        fragmented = self.fragment_length is not None
        keep = (hi - lo) >= max(self.min_length, 1)
        self.first_too_short = None
        if not keep.all():
            short = np.flatnonzero(~keep)
            self.skipped.too_short += len(short)
            self.skipped.too_short_bases += int((hi - lo)[short].sum())
            first = short[0]
            rid = contig_id(block.ids[record[first]], int(lo[first]), int(hi[first]), fragmented)
            self.first_too_short = (int(record[first]), rid)
            record, lo, hi = record[keep], lo[keep], hi[keep]
        starts = block.bounds[record] + lo
        ends = block.bounds[record] + hi
        names = block.ids
        if fragmented:
            spans = zip(record.tolist(), lo.tolist(), hi.tolist(), strict=True)
            ids = [fragment_contig_id(names[r], s, e) for r, s, e in spans]
        else:
            ids = [names[r] for r in record.tolist()]
        contig_labels = [labels[r] for r in record.tolist()]
        contig_depths = None if abundance is None else abundance[record]
        # bases before each contig, to find where the base budget closes a batch
        before = np.zeros(len(starts) + 1, dtype=np.int64)
        np.cumsum(ends - starts, out=before[1:])
        done = []
        i = 0
        while i < len(starts):
            batch = self._current
            take = min(self.rows - len(batch), len(starts) - i)
            # the first contig that brings the batch to max_bases is its last
            full = int(np.searchsorted(before, self.max_bases - batch.bases + before[i], side="left"))
            take = min(take, max(full - i, 1))
            j = i + take
            depths = None if contig_depths is None else contig_depths[i:j]
            batch.add(block.seq, starts[i:j], ends[i:j], ids[i:j], contig_labels[i:j], depths)
            i = j
            if len(batch) >= self.rows or batch.bases >= self.max_bases:
                done.append(batch)
                self._current = Batch(batch.index + 1)
        return done

    def finish(self) -> list[Batch]:
        """The last, partly filled batch, if any."""
        return [self._current] if len(self._current) else []
